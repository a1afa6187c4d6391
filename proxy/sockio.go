package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// sockIO reads and writes a TCP socket with raw system calls: the reads
// and writes net.Conn makes, the same loop around the runtime's poller
// (a read that finds nothing, or a write that finds the buffer full, waits
// for the socket as net.Conn's does, deadlines and Close included), and the
// same errors, but without telling the scheduler that the thread enters a
// system call. The socket is non-blocking, so the call never waits; what
// the scheduler's bookkeeping would buy (another thread taking the P over
// if the call blocked) is never needed, and what it costs is a wake-up of
// the runtime's monitor thread (sysmon) from its deep sleep at the first
// system call after every idle moment, then a tick every 20 µs while the
// process is busy: on a proxy that idles between bursts of requests, a
// thread switch and a timer for every request or two.
type sockIO struct {
	conn *net.TCPConn // for the addresses of errors
	raw  syscall.RawConn

	rmu  sync.Mutex // one Read at a time, as net.Conn's
	rfn  func(fd uintptr) bool
	rbuf []byte
	rn   int
	rerr syscall.Errno
	wmu  sync.Mutex // one Write at a time, as net.Conn's
	wfn  func(fd uintptr) bool
	wbuf []byte
	wn   int
	werr syscall.Errno
}

// newSockIO returns a sockIO for conn, or nil when conn gives no access to
// its socket (its own Read and Write are used then).
func newSockIO(conn *net.TCPConn) *sockIO {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil
	}
	s := &sockIO{conn: conn, raw: raw}
	s.rfn, s.wfn = s.read, s.write // bound once: a call allocates nothing
	return s
}

// maxRW caps one read(2) or write(2), as internal/poll does.
const maxRW = 1 << 30

func (s *sockIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil // as net.Conn: no read, and no io.EOF
	}
	if len(p) > maxRW {
		p = p[:maxRW]
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.rbuf, s.rn, s.rerr = p, 0, 0
	err := s.raw.Read(s.rfn)
	s.rbuf = nil
	switch {
	case err != nil:
		return 0, renameOp(err, "read") // closed, or past the deadline
	case s.rerr != 0:
		return 0, s.opError("read", s.rerr)
	case s.rn == 0:
		return 0, io.EOF
	}
	return s.rn, nil
}

// read is the RawConn's: false waits for the socket to be readable.
func (s *sockIO) read(fd uintptr) bool {
	for {
		n, errno := sockRead(fd, s.rbuf)
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case 0:
			s.rn = n
		default:
			s.rerr = errno
		}
		return true
	}
}

func (s *sockIO) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wbuf, s.wn, s.werr = p, 0, 0
	err := s.raw.Write(s.wfn)
	s.wbuf = nil
	switch {
	case err != nil:
		return s.wn, renameOp(err, "write")
	case s.werr != 0:
		return s.wn, s.opError("write", s.werr)
	}
	return s.wn, nil
}

// write is the RawConn's: it writes all of wbuf, and returns false to wait
// for room when the socket's buffer is full.
func (s *sockIO) write(fd uintptr) bool {
	for s.wn < len(s.wbuf) {
		n, errno := sockWrite(fd, s.wbuf[s.wn:min(len(s.wbuf), s.wn+maxRW)])
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case 0:
			s.wn += n
		default:
			s.werr = errno
			return true
		}
	}
	return true
}

// opError is the error net.Conn's Read or Write returns for errno.
func (s *sockIO) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: "tcp", Source: s.conn.LocalAddr(), Addr: s.conn.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}

// renameOp gives an error of RawConn's Read or Write ("raw-read",
// "raw-write") the Op net.Conn's Read or Write would have given it.
func renameOp(err error, op string) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		oe.Op = op
	}
	return err
}
