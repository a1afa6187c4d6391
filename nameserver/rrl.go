package nameserver

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"
)

// rrlAction is what response rate limiting decides for a reply.
type rrlAction uint8

const (
	rrlAllow rrlAction = iota // send it
	rrlDrop                   // send nothing
	rrlSlip                   // send an empty reply with TC set
)

// limiter is response rate limiting: a fixed table of token buckets (kept
// as GCRA "theoretical arrival times") indexed by a hash of the client's
// network. Memory does not grow with the number of clients; networks that
// land in one bucket take it over from each other, which can only let
// more replies through, never fewer.
type limiter struct {
	buckets  []bucket
	interval int64 // nanoseconds per reply at the rate
	tol      int64 // how far ahead of now a bucket may run: the burst
	slip     int
	v4, v6   int // prefix lengths
}

type bucket struct {
	mu    sync.Mutex
	net   uint64 // which network holds the bucket
	tat   int64  // unix nanoseconds when the bucket is full again
	drops uint32
}

func newLimiter(c RRLConfig) *limiter {
	if c.Rate < 0 {
		return nil
	}
	interval := int64(time.Second) / int64(c.Rate)
	return &limiter{
		buckets:  make([]bucket, c.Buckets),
		interval: interval,
		tol:      interval * int64(c.Burst),
		slip:     c.Slip,
		v4:       c.IPv4Prefix,
		v6:       c.IPv6Prefix,
	}
}

// netKey hashes the client's network (never zero).
func (l *limiter) netKey(ip netip.Addr) uint64 {
	var h uint64
	if ip.Is4() || ip.Is4In6() {
		p, _ := ip.Unmap().Prefix(l.v4)
		a := p.Addr().As4()
		h = uint64(binary.BigEndian.Uint32(a[:])) | 4<<56
	} else {
		p, _ := ip.Prefix(l.v6)
		a := p.Addr().As16()
		h = binary.BigEndian.Uint64(a[:8])*0x9E3779B97F4A7C15 ^ binary.BigEndian.Uint64(a[8:])
	}
	// A 64-bit finaliser (from MurmurHash3) spreads the bits for indexing.
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h | 1
}

// take charges one reply to ip's network at now (unix nanoseconds).
func (l *limiter) take(ip netip.Addr, now int64) rrlAction {
	key := l.netKey(ip)
	b := &l.buckets[key%uint64(len(l.buckets))]
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.net != key {
		b.net, b.tat, b.drops = key, now, 0
	}
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
