package proxy

import (
	"errors"
	"sync"
	"time"
)

// resetCounter watches the frames an h2c (prior-knowledge HTTP/2) client
// sends, below the HTTP/2 server, and counts its RST_STREAM frames against
// a budget (resetBurst at once, resetRefill a second after that): a client
// that opens streams and cancels them without end (the "rapid reset"
// attack) is cut off within the budget, before the server spends more on
// it. net/http's server drops most such streams itself, without calling a
// handler, so a budget kept by the handler alone never sees them. Over
// TLS the frames are out of reach (net/http gives no place between TLS
// and HTTP/2, and golang.org/x/net's own server is deprecated): there the
// handler's budget is what there is.
type resetCounter struct {
	mu      sync.Mutex
	preface int     // bytes of the client preface still to skip
	head    [9]byte // the frame header being read
	inHead  int     // bytes of it read
	skip    uint32  // payload bytes of the current frame still to pass
	tokens  float64 // resets spent, draining at resetRefill a second
	at      time.Time
	over    bool
}

// errTooManyResets ends a connection whose client is over its budget.
var errTooManyResets = errors.New("client cancels HTTP/2 streams faster than allowed")

const (
	http2Preface      = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	frameTypeRSTStrem = 0x3
)

func newResetCounter() *resetCounter { return &resetCounter{preface: len(http2Preface)} }

// saw reads the client's bytes p (in order, as they arrive) and reports
// whether the client is over its budget.
func (rc *resetCounter) saw(p []byte, now time.Time) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for len(p) > 0 && !rc.over {
		switch {
		case rc.preface > 0:
			n := min(rc.preface, len(p))
			rc.preface -= n
			p = p[n:]
		case rc.skip > 0:
			n := min(int(rc.skip), len(p))
			rc.skip -= uint32(n)
			p = p[n:]
		default:
			n := copy(rc.head[rc.inHead:], p)
			rc.inHead += n
			p = p[n:]
			if rc.inHead < len(rc.head) {
				continue
			}
			rc.inHead = 0
			rc.skip = uint32(rc.head[0])<<16 | uint32(rc.head[1])<<8 | uint32(rc.head[2])
			if rc.head[3] == frameTypeRSTStrem {
				rc.spend(now)
			}
		}
	}
	return rc.over
}

func (rc *resetCounter) spend(now time.Time) {
	if !rc.at.IsZero() {
		rc.tokens = max(0, rc.tokens-now.Sub(rc.at).Seconds()*resetRefill)
	}
	rc.at = now
	if rc.tokens++; rc.tokens > resetBurst {
		rc.over = true
	}
}
