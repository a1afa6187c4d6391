package nameserver

import (
	"crypto/rand"
	"encoding/binary"
	"math/bits"
	"net/netip"
	"sync"
	"time"

	"github.com/dchest/siphash"
)

// rrlAction is what response rate limiting decides for a reply.
type rrlAction uint8

const (
	rrlAllow rrlAction = iota // send it
	rrlDrop                   // send nothing
	rrlSlip                   // send an empty reply with TC set
)

// limiter is response rate limiting: a fixed table of token buckets (kept
// as GCRA "theoretical arrival times") indexed by a keyed hash of the
// client's network. Memory does not grow with the number of clients.
//
// The hash is SipHash-2-4 (a keyed pseudorandom function, as for cookies)
// under a random 128-bit key of each limiter's own, so which networks
// share a bucket cannot be worked out offline. Networks that do
// land in one bucket share its budget: a colliding network is charged to
// the same bucket and never resets it, so colliding can only let fewer
// replies through (for all of them together, the budget of one network),
// never more.
type limiter struct {
	buckets  []bucket
	k0, k1   uint64 // the SipHash key
	interval int64  // nanoseconds per reply at the rate
	tol      int64  // how far ahead of now a bucket may run: the burst
	slip     int
	v4, v6   int // prefix lengths
}

type bucket struct {
	mu    sync.Mutex
	tat   int64 // unix nanoseconds when the bucket is full again
	drops uint32
}

func newLimiter(c RRLConfig) *limiter {
	if c.Rate < 0 {
		return nil
	}
	interval := int64(time.Second) / int64(c.Rate)
	var key [16]byte
	_, _ = rand.Read(key[:]) // never fails
	return &limiter{
		buckets:  make([]bucket, c.Buckets),
		k0:       binary.LittleEndian.Uint64(key[:]),
		k1:       binary.LittleEndian.Uint64(key[8:]),
		interval: interval,
		tol:      interval * int64(c.Burst),
		slip:     c.Slip,
		v4:       c.IPv4Prefix,
		v6:       c.IPv6Prefix,
	}
}

// index returns the bucket of ip's network: SipHash-2-4 of its prefix's
// address (4 octets for IPv4, 16 for IPv6: messages of different lengths,
// so the families never meet), mapped onto the table by a multiply-shift.
func (l *limiter) index(ip netip.Addr) int {
	var h uint64
	if ip.Is4() || ip.Is4In6() {
		p, _ := ip.Unmap().Prefix(l.v4)
		a := p.Addr().As4()
		h = siphash.Hash(l.k0, l.k1, a[:])
	} else {
		p, _ := ip.Prefix(l.v6)
		a := p.Addr().As16()
		h = siphash.Hash(l.k0, l.k1, a[:])
	}
	i, _ := bits.Mul64(h, uint64(len(l.buckets)))
	return int(i)
}

// take charges one reply to ip's network at now (unix nanoseconds).
func (l *limiter) take(ip netip.Addr, now int64) rrlAction {
	b := &l.buckets[l.index(ip)]
	b.mu.Lock()
	defer b.mu.Unlock()
	tat := max(b.tat, now)
	if tat-now <= l.tol {
		b.tat = tat + l.interval
		return rrlAllow
	}
	b.drops++
	if l.slip > 0 && b.drops%uint32(l.slip) == 0 {
		return rrlSlip
	}
	return rrlDrop
}
