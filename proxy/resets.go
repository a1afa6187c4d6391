package proxy

import (
	"encoding/binary"
	"errors"
	"time"
)

// resetCounter reads the frames an HTTP/2 client sends, below the HTTP/2
// server (after TLS, when there is TLS: see guardConn), and counts its
// RST_STREAM frames against a budget (resetBurst at once, resetRefill a
// second after that): a client that opens streams and cancels them
// without end (the "rapid reset" attack, CVE-2023-44487) is cut off
// within the budget, before the server spends more on it. net/http's
// server drops most such streams itself, without calling a handler, so a
// budget kept by the handler alone never sees them.
//
// It is used by the connection's reading goroutine only.
type resetCounter struct {
	preface    int       // bytes of the client preface still to skip
	frames     frameEdge // where the client's frames start and end
	tokens     float64   // resets spent, draining at resetRefill a second
	at         time.Time
	over       bool
	lastStream uint32 // the highest stream the client opened
}

// errTooManyResets ends a connection whose client is over its budget.
var errTooManyResets = errors.New("client cancels HTTP/2 streams faster than allowed")

const (
	http2Preface      = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	frameTypeHeaders  = 0x1
	frameTypeRSTStrem = 0x3
	frameTypeGoAway   = 0x7
	errCodeCalm       = 0xb // ENHANCE_YOUR_CALM (RFC 9113 §7)
)

func newResetCounter() *resetCounter { return &resetCounter{preface: len(http2Preface)} }

// saw reads the client's bytes p (in order, as they arrive) and reports
// whether the client is over its budget.
func (rc *resetCounter) saw(p []byte, now time.Time) bool {
	if n := min(rc.preface, len(p)); n > 0 {
		rc.preface -= n
		p = p[n:]
	}
	rc.frames.pass(p, func(head *[9]byte) bool {
		switch head[3] {
		case frameTypeHeaders:
			rc.lastStream = max(rc.lastStream, binary.BigEndian.Uint32(head[5:])&(1<<31-1))
		case frameTypeRSTStrem:
			rc.spend(now)
		}
		return !rc.over
	})
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

// frameEdge follows a stream of HTTP/2 frames (after the preface) piece
// by piece, to know each frame's header and where each frame ends.
type frameEdge struct {
	head   [9]byte // the frame header being read
	inHead int     // bytes of it read
	skip   uint32  // payload bytes of the current frame still to pass
}

// pass moves over p, calling header with each frame header completed in
// it, until header returns false.
func (f *frameEdge) pass(p []byte, header func(*[9]byte) bool) {
	for len(p) > 0 {
		if f.skip > 0 {
			n := min(int(f.skip), len(p))
			f.skip -= uint32(n)
			p = p[n:]
			continue
		}
		n := copy(f.head[f.inHead:], p)
		f.inHead += n
		p = p[n:]
		if f.inHead < len(f.head) {
			return
		}
		f.inHead = 0
		f.skip = uint32(f.head[0])<<16 | uint32(f.head[1])<<8 | uint32(f.head[2])
		if header != nil && !header(&f.head) {
			return
		}
	}
}

// between reports whether the stream is between two frames.
func (f *frameEdge) between() bool { return f.inHead == 0 && f.skip == 0 }

// goAwayCalm is a GOAWAY frame (RFC 9113 §6.8) with ENHANCE_YOUR_CALM,
// naming lastStream as the last the server may have acted on.
func goAwayCalm(lastStream uint32) []byte {
	const debug = "too many stream resets"
	f := make([]byte, 9+8+len(debug))
	f[2] = byte(8 + len(debug)) // length (fits in one byte)
	f[3] = frameTypeGoAway
	binary.BigEndian.PutUint32(f[9:], lastStream&(1<<31-1))
	binary.BigEndian.PutUint32(f[13:], errCodeCalm)
	copy(f[17:], debug)
	return f
}
