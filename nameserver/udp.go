package nameserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UDP is read and answered in batches: up to udpBatch datagrams a
// recvmmsg, their replies by one sendmmsg. Each reader waits for its
// socket in Go's network poller, as a net.UDPConn's ReadFrom would, but
// its reads and writes are raw system calls (the socket is non-blocking,
// so they never wait): parking a goroutine and telling the scheduler of
// every system call, once per query, cost replns a thread hand-off and a
// wake-up of the runtime's monitor per query (bench/dns). A reader stops
// at a read deadline in the past (Server.stopUDP), after the batch in hand.
//
// The handler never waits for a store (Source answers at once, loading
// in the background), so one reader per socket keeps a CPU busy.

// maxUDPQuery is the largest UDP query read whole. A DNS query is a
// question and at most an OPT and a TSIG record: a few hundred octets. A
// longer datagram arrives cut (MSG_TRUNC) and is dropped as malformed,
// never answered from a part of it.
const maxUDPQuery = 4096

// udpBatch is how many datagrams one recvmmsg takes, and one sendmmsg
// sends, at most.
const udpBatch = 32

// udpReader reads queries from one socket, answers them, and writes the
// replies. Its buffers are its own: the readers of a socket share
// nothing but the socket.
type udpReader struct {
	h  *Handler
	sc *scratch

	hdrs  [udpBatch]unix.Mmsghdr // the batch read, then the replies
	iovs  [udpBatch]unix.Iovec
	names [udpBatch]unix.RawSockaddrAny // each query's source: its reply's destination
	bufs  [udpBatch][]byte              // each query, read in place
	out   [udpBatch]unix.Mmsghdr        // the replies, sent in order
	oiovs [udpBatch]unix.Iovec
	obufs [udpBatch][]byte // each reply, copied from the handler's scratch

	// What the poller's callbacks (bound once: a wait allocates nothing)
	// did: the datagrams read or replies sent, and the error.
	readFn, writeFn func(fd uintptr) bool
	n, sent, queued int
	errno           unix.Errno
}

func newUDPReader(h *Handler) *udpReader {
	r := &udpReader{h: h, sc: h.scratch.New().(*scratch)}
	backing := make([]byte, udpBatch*maxUDPQuery)
	for i := range r.hdrs {
		r.bufs[i] = backing[i*maxUDPQuery : (i+1)*maxUDPQuery]
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(maxUDPQuery)
	}
	r.readFn, r.writeFn = r.read, r.write
	return r
}

// serve reads and answers on c until a read deadline passes (the server
// sets one in the past to stop it) or c is closed.
func (r *udpReader) serve(ctx context.Context, c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("udp socket: %w", err)
	}
	for {
		if err := rc.Read(r.readFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("udp: read: %w", err)
		}
		// Another error (an ICMP error surfacing on the socket, say) was
		// taken by the read that reported it: the next one waits again.
		if r.errno != 0 {
			continue
		}
		r.queued, r.sent = r.answer(ctx, r.n), 0
		if r.queued > 0 {
			_ = rc.Write(r.writeFn) // a reply the socket refuses is not retried: the client asks again
		}
	}
}

// read takes up to udpBatch datagrams that are waiting; it asks the poller
// to wait when there are none.
func (r *udpReader) read(fd uintptr) bool {
	for i := range r.hdrs {
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = unix.SizeofSockaddrAny
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Flags = 0
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), udpBatch, unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case unix.EAGAIN:
		return false
	case unix.EINTR:
		return r.read(fd)
	}
	r.n, r.errno = int(n), errno
	return true
}

// answer answers the n queries read, and returns how many replies it
// queued in r.out.
func (r *udpReader) answer(ctx context.Context, n int) int {
	queued := 0
	for i := range n {
		m := &r.hdrs[i]
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
			r.h.metrics.observe(0, -1, 0)
			continue
		}
		client, ok := sourceAddr(&r.names[i])
		if !ok {
			continue
		}
		reply := r.h.respond(ctx, r.sc, r.bufs[i][:m.Len], client, false)
		if reply == nil {
			continue
		}
		r.obufs[i] = append(r.obufs[i][:0], reply...)
		o := &r.out[queued]
		o.Hdr = unix.Msghdr{Name: m.Hdr.Name, Namelen: m.Hdr.Namelen, Iov: &r.oiovs[queued]}
		o.Hdr.SetIovlen(1)
		r.oiovs[queued].Base = &r.obufs[i][0]
		r.oiovs[queued].SetLen(len(r.obufs[i]))
		queued++
	}
	return queued
}

// write sends the queued replies from r.sent on; it asks the poller to
// wait when the socket's send buffer is full. A reply the kernel refuses
// (its client's address unreachable, say) is skipped, not retried.
func (r *udpReader) write(fd uintptr) bool {
	for r.sent < r.queued {
		k, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&r.out[r.sent])), uintptr(r.queued-r.sent), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			r.sent += int(k)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			r.sent++ // the one the kernel refused
		}
	}
	return true
}

// sourceAddr returns a datagram's source address, unmapped from IPv6.
func sourceAddr(sa *unix.RawSockaddrAny) (netip.Addr, bool) {
	switch sa.Addr.Family {
	case unix.AF_INET:
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrFrom4(in.Addr), true
	case unix.AF_INET6:
		in := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		return netip.AddrFrom16(in.Addr).Unmap(), true
	}
	return netip.Addr{}, false
}
