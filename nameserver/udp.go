package nameserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UDP is read and answered outside Go's network poller. Parking a
// goroutine in the poller at every pause in the traffic, and waking it,
// costs a Go server a thread hand-off and a wake-up of the runtime's
// monitor per query: at 20,000 queries/s that was 40 % of replns's CPU
// time (bench/dns). Instead each reader blocks in poll(2) in its own
// thread, as NSD's do, and reads and writes up to udpBatch datagrams at
// a time with recvmmsg and sendmmsg. The socket stays non-blocking (a
// process taking it over through the handover shares its file
// description), and an eventfd wakes every reader at once to stop.
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
	h    *Handler
	stop *stopSignal
	sc   *scratch

	hdrs  [udpBatch]unix.Mmsghdr // the batch read, then the replies
	iovs  [udpBatch]unix.Iovec
	names [udpBatch]unix.RawSockaddrAny // each query's source: its reply's destination
	bufs  [udpBatch][]byte              // each query, read in place
	out   [udpBatch]unix.Mmsghdr        // the replies, sent in order
	oiovs [udpBatch]unix.Iovec
	obufs [udpBatch][]byte // each reply, copied from the handler's scratch
}

func newUDPReader(h *Handler, stop *stopSignal) *udpReader {
	r := &udpReader{h: h, stop: stop, sc: h.scratch.New().(*scratch)}
	backing := make([]byte, udpBatch*maxUDPQuery)
	for i := range r.hdrs {
		r.bufs[i] = backing[i*maxUDPQuery : (i+1)*maxUDPQuery]
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(maxUDPQuery)
	}
	return r
}

// serve reads and answers on c until the stop eventfd is readable. c must
// not be closed before serve returns (the server closes its sockets after
// its readers are done).
func (r *udpReader) serve(ctx context.Context, c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("udp socket: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = r.loop(ctx, int(fd)) }); err != nil {
		return fmt.Errorf("udp socket: %w", err)
	}
	return serr
}

// loop waits for datagrams, reads a batch, answers it, and writes the
// replies, until told to stop. It waits before reading unless the last
// read filled a batch: at a steady rate most reads would otherwise find
// nothing, one system call lost per wake-up.
func (r *udpReader) loop(ctx context.Context, fd int) error {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(r.stop.fd), Events: unix.POLLIN}}
	full := false
	for {
		if full && r.stop.fired.Load() {
			return nil
		}
		if !full {
			if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("udp: poll: %w", err)
			}
			if fds[1].Revents != 0 {
				return nil
			}
		}
		// An error here (EAGAIN, or an ICMP error surfacing on the socket)
		// is followed by a wait, so that a socket in error cannot spin.
		n, err := r.read(fd)
		full = err == nil && n == udpBatch
		if err == nil {
			r.flush(fd, r.answer(ctx, n))
		}
	}
}

// read takes up to udpBatch datagrams that are already waiting.
func (r *udpReader) read(fd int) (int, error) {
	for i := range r.hdrs {
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = unix.SizeofSockaddrAny
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Flags = 0
	}
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.hdrs[0])), udpBatch, 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
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

// flush sends the first n replies in r.out. A reply the kernel refuses
// (its client's address unreachable, say) is skipped, not retried: the
// client asks again. A full send buffer is waited out, briefly.
func (r *udpReader) flush(fd int, n int) {
	waited := false
	for sent := 0; sent < n; {
		k, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.out[sent])), uintptr(n-sent), 0, 0, 0)
		switch {
		case errno == 0:
			sent += int(k)
		case errno == unix.EINTR:
		case errno == unix.EAGAIN && !waited:
			waited = true
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, 100)
		default:
			sent++ // the one the kernel refused
		}
	}
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

// stopSignal tells a server's UDP readers to stop: an eventfd that, once
// written, is readable for good (every reader waiting in poll returns),
// and a flag for the readers that are too busy to wait.
type stopSignal struct {
	fd    int
	fired atomic.Bool
}

func newStopSignal() (*stopSignal, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("udp: eventfd: %w", err)
	}
	return &stopSignal{fd: fd}, nil
}

func (s *stopSignal) fire() {
	s.fired.Store(true)
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(s.fd, one[:])
}

// close releases the eventfd, once every reader has returned.
func (s *stopSignal) close() { _ = unix.Close(s.fd) }
