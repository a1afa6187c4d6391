// Package handover passes a daemon's listening sockets to the process that
// replaces it, so that an upgrade refuses and resets no connection.
//
// The running process serves a Unix socket (the handover socket, mode
// 0600, and only a peer of the same user is answered). A new process
// started with the same path connects to it, receives every listening
// socket of the old one (SCM_RIGHTS) and binds only what it does not
// inherit. Both processes then accept on the same sockets, so nothing a
// client sends is lost to a closing listen queue (which SO_REUSEPORT alone
// cannot avoid: the connections queued on the old process's socket are
// reset when it closes). When the new process is ready it says so; the old
// one stops accepting, lets the path go and drains; the new one serves the
// path for the next upgrade. This is HAProxy's -x, with the new process
// started by whatever supervises the daemon (systemd, a test), not forked
// by the old one.
package handover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Sockets binds a daemon's listening sockets, inheriting those its
// predecessor holds, and hands them to its own successor. A nil *Sockets
// binds fresh sockets and hands nothing over.
type Sockets struct {
	path   string
	logger *zap.Logger

	mu        sync.Mutex
	inherited map[string][]*os.File // from the predecessor, by key
	pred      *net.UnixConn         // to the predecessor, until Ready
	predPID   int
	bound     []bound // every socket this process listens on, for its successor
	ln        *net.UnixListener
	lnFile    os.FileInfo // what the path named when this process bound it
	closed    bool

	done chan struct{} // closed when a successor took over
	quit chan struct{} // closed by Close
	wg   sync.WaitGroup
}

type bound struct {
	entry
	f interface{ File() (*os.File, error) }
}

// entry names one socket in the exchange: the name the daemon gives it
// (its role, "https", "udp 3"), the network and the address as configured.
type entry struct {
	Name    string `json:"name"`
	Network string `json:"network"`
	Addr    string `json:"addr"`
}

func (e entry) key() string { return e.Name + " " + e.Network + " " + e.Addr }

// message is one line of the exchange.
type message struct {
	Op      string  `json:"op"` // "take", "sockets", "ready", "bye", "refused"
	PID     int     `json:"pid,omitempty"`
	Sockets []entry `json:"sockets,omitempty"`
	Reason  string  `json:"reason,omitempty"`
}

// maxSockets bounds the sockets passed in one handover (SCM_MAX_FD is 253).
const maxSockets = 200

// maxPath bounds the handover socket's path: a Unix socket's address holds
// 107 bytes, and the new socket is bound beside it, named with the pid.
const maxPath = 96

// exchangeTimeout bounds each step of a handover on either side.
const exchangeTimeout = 10 * time.Second

// New prepares the sockets of a daemon whose handover socket is path: when
// a process serves path, New takes over its listening sockets (they are
// used by Listen and ListenPacket); when none does (no file, or a stale
// one), Listen binds fresh sockets. An empty path is no handover at all:
// New returns nil. The caller calls Ready once it serves, and Close when it
// stops.
func New(ctx context.Context, path string, logger *zap.Logger) (*Sockets, error) {
	if path == "" {
		return nil, nil
	}
	if len(path) > maxPath {
		return nil, fmt.Errorf("handover socket %s: %d bytes long, more than the %d a Unix socket's path may have here: choose a shorter path", path, len(path), maxPath)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
		if err == nil {
			err = errors.New("not a folder")
		}
		return nil, fmt.Errorf("handover socket %s: its folder: %w (create it, e.g. with systemd's RuntimeDirectory=)", path, err)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	s := &Sockets{path: path, logger: logger.Named("handover"), inherited: map[string][]*os.File{},
		done: make(chan struct{}), quit: make(chan struct{})}
	if err := s.take(ctx); err != nil {
		return nil, fmt.Errorf("take over the sockets of the process at %s: %w", path, err)
	}
	return s, nil
}

// take asks the process serving s.path, if any, for its sockets.
func (s *Sockets) take(ctx context.Context) error {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, exchangeTimeout)
	defer cancel()
	c, err := d.DialContext(ctx, "unixpacket", s.path)
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return nil // nobody serves it: a first start, or a predecessor gone
	}
	if err != nil {
		return err
	}
	uc := c.(*net.UnixConn)
	ok := false
	defer func() {
		if !ok {
			uc.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		_ = uc.SetDeadline(dl)
	}
	pid, err := peerCheck(uc)
	if err != nil {
		return err
	}
	if err := writeMessage(uc, message{Op: "take", PID: os.Getpid()}, nil); err != nil {
		return err
	}
	m, files, err := readMessage(uc, true)
	if err != nil {
		return err
	}
	if m.Op == "refused" {
		return fmt.Errorf("process %d refused: %s", pid, m.Reason)
	}
	if m.Op != "sockets" || len(files) != len(m.Sockets) {
		closeFiles(files)
		return fmt.Errorf("process %d answered %q with %d sockets for %d names", pid, m.Op, len(files), len(m.Sockets))
	}
	for i, e := range m.Sockets {
		s.inherited[e.key()] = append(s.inherited[e.key()], files[i])
	}
	_ = uc.SetDeadline(time.Time{})
	s.pred, s.predPID, ok = uc, pid, true
	s.logger.Info("taking over", zap.Int("pid", pid), zap.Int("sockets", len(files)))
	return nil
}

// Predecessor returns the process id of the process whose sockets were
// taken over, or 0.
func (s *Sockets) Predecessor() int {
	if s == nil {
		return 0
	}
	return s.predPID
}

// inherit returns the predecessor's socket for e, if it passed one.
func (s *Sockets) inherit(e entry) *os.File {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fs := s.inherited[e.key()]
	if len(fs) == 0 {
		return nil
	}
	f := fs[0]
	s.inherited[e.key()] = fs[1:]
	return f
}

func (s *Sockets) record(e entry, f interface{ File() (*os.File, error) }) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.bound = append(s.bound, bound{entry: e, f: f})
	s.mu.Unlock()
}

// ReusePort is a net.ListenConfig Control that sets SO_REUSEPORT: a socket
// bound fresh can then share its address with a running process (of the
// same user) that did not hand its own over, and several sockets of one
// process can share an address (replns's UDP sockets).
func ReusePort(_, _ string, c syscall.RawConn) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); cerr != nil {
		return cerr
	}
	return err
}

// Listen returns the stream listener named name on network and addr: the
// predecessor's when it passed one under the same name and address, else a
// new one (SO_REUSEPORT). s may be nil.
func (s *Sockets) Listen(ctx context.Context, name, network, addr string) (net.Listener, error) {
	e := entry{Name: name, Network: network, Addr: addr}
	if f := s.inherit(e); f != nil {
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("inherited socket %s: %w", e.key(), err)
		}
		if f, ok := ln.(interface{ File() (*os.File, error) }); ok {
			s.record(e, f)
		}
		return ln, nil
	}
	ln, err := (&net.ListenConfig{Control: ReusePort}).Listen(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if f, ok := ln.(interface{ File() (*os.File, error) }); ok {
		s.record(e, f)
	}
	return ln, nil
}

// ListenPacket is Listen for datagram sockets. The caller sets what it
// wants on a new socket (buffer sizes) itself; an inherited one keeps the
// predecessor's.
func (s *Sockets) ListenPacket(ctx context.Context, name, network, addr string) (net.PacketConn, error) {
	e := entry{Name: name, Network: network, Addr: addr}
	if f := s.inherit(e); f != nil {
		pc, err := net.FilePacketConn(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("inherited socket %s: %w", e.key(), err)
		}
		if f, ok := pc.(interface{ File() (*os.File, error) }); ok {
			s.record(e, f)
		}
		return pc, nil
	}
	pc, err := (&net.ListenConfig{Control: ReusePort}).ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if f, ok := pc.(interface{ File() (*os.File, error) }); ok {
		s.record(e, f)
	}
	return pc, nil
}

// Ready is called once the daemon serves on its sockets: the predecessor,
// if any, is told to stop accepting and drain (Ready returns once it has
// let go), the inherited sockets nobody asked for are closed, and s serves
// the handover socket for a successor from then on. s may be nil.
func (s *Sockets) Ready(ctx context.Context) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	for key, fs := range s.inherited {
		if len(fs) > 0 {
			s.logger.Warn("an inherited socket is not used: closed", zap.String("socket", key))
		}
		closeFiles(fs)
	}
	s.inherited = nil
	pred := s.pred
	s.pred = nil
	s.mu.Unlock()
	if pred != nil {
		err := release(ctx, pred)
		pred.Close()
		if err != nil {
			return fmt.Errorf("tell process %d to stop: %w", s.predPID, err)
		}
		s.logger.Info("took over", zap.Int("pid", s.predPID))
	}
	return s.serve()
}

// release tells the predecessor that its successor serves, and waits for
// its goodbye (it has stopped serving the handover socket then).
func release(ctx context.Context, c *net.UnixConn) error {
	ctx, cancel := context.WithTimeout(ctx, exchangeTimeout)
	defer cancel()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	if err := writeMessage(c, message{Op: "ready", PID: os.Getpid()}, nil); err != nil {
		return err
	}
	m, _, err := readMessage(c, false)
	if err != nil {
		return err
	}
	if m.Op != "bye" {
		return fmt.Errorf("answered %q to ready", m.Op)
	}
	return nil
}

// serve binds the handover socket (a new file renamed over the path, so
// that the path always names a live socket or a stale one, never none
// while a process serves) and answers successors until one takes over or
// Close is called.
func (s *Sockets) serve() error {
	tmp := s.path + "." + strconv.Itoa(os.Getpid())
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("handover socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // the path may be a successor's by then
	fail := func(err error) error {
		ln.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("handover socket %s: %w", s.path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	fi, err := os.Stat(tmp)
	if err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fail(err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fail(errors.New("closed"))
	}
	s.ln, s.lnFile = ln, fi
	s.mu.Unlock()
	s.logger.Info("serving the handover socket", zap.String("path", s.path))
	s.wg.Go(func() { s.accept(ln) })
	return nil
}

// accept answers successors one at a time.
func (s *Sockets) accept(ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return // closed: taken over, or Close
		}
		if s.answer(c) {
			return
		}
	}
}

// answer passes the sockets to one successor and reports whether it took
// over (it said it was ready).
func (s *Sockets) answer(c *net.UnixConn) bool {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(exchangeTimeout))
	pid, err := peerCheck(c)
	if err != nil {
		s.logger.Warn("handover refused", zap.Error(err))
		_ = writeMessage(c, message{Op: "refused", Reason: err.Error()}, nil)
		return false
	}
	log := s.logger.With(zap.Int("successor", pid))
	if m, _, err := readMessage(c, false); err != nil || m.Op != "take" {
		log.Warn("handover: no take request", zap.Error(err), zap.String("op", m.Op))
		return false
	}
	entries, files, err := s.files()
	if err != nil {
		log.Warn("handover refused", zap.Error(err))
		_ = writeMessage(c, message{Op: "refused", Reason: err.Error()}, nil)
		return false
	}
	err = writeMessage(c, message{Op: "sockets", PID: os.Getpid(), Sockets: entries}, files)
	closeFiles(files)
	if err != nil {
		log.Warn("handover: sockets not sent", zap.Error(err))
		return false
	}
	log.Info("sockets passed to a successor; serving until it is ready", zap.Int("sockets", len(files)))
	// The successor starts (opens its store, loads its routes) before it
	// says it is ready: wait for as long as it takes, or until it goes.
	_ = c.SetDeadline(time.Time{})
	stop := make(chan struct{})
	go func() {
		select {
		case <-s.quit:
			_ = c.SetDeadline(time.Unix(1, 0))
		case <-stop:
		}
	}()
	m, _, err := readMessage(c, false)
	close(stop)
	if err != nil || m.Op != "ready" {
		log.Warn("the successor went away before it was ready; still serving", zap.Error(err), zap.String("op", m.Op))
		return false
	}
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	s.mu.Unlock()
	_ = c.SetDeadline(time.Now().Add(exchangeTimeout))
	if err := writeMessage(c, message{Op: "bye", PID: os.Getpid()}, nil); err != nil {
		log.Warn("handover: goodbye not sent", zap.Error(err))
	}
	log.Info("the successor is ready: draining")
	close(s.done)
	return true
}

// files dups every bound socket for the successor.
func (s *Sockets) files() ([]entry, []*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bound) > maxSockets {
		return nil, nil, fmt.Errorf("%d sockets, more than %d", len(s.bound), maxSockets)
	}
	var entries []entry
	var files []*os.File
	for _, b := range s.bound {
		f, err := b.f.File()
		if err != nil {
			closeFiles(files)
			return nil, nil, fmt.Errorf("socket %s: %w (draining?)", b.key(), err)
		}
		entries, files = append(entries, b.entry), append(files, f)
	}
	return entries, files, nil
}

// Done is closed when a successor has taken over: the daemon then drains
// and exits. A nil s's is never closed.
func (s *Sockets) Done() <-chan struct{} {
	if s == nil {
		return nil
	}
	return s.done
}

// Close stops serving the handover socket (a process that is stopping
// hands nothing over: a new one then binds fresh sockets) and removes its
// file when it is still this process's. It does not close the listening
// sockets: they are the daemon's. s may be nil.
func (s *Sockets) Close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	ln, fi := s.ln, s.lnFile
	s.ln = nil
	if s.pred != nil {
		s.pred.Close()
		s.pred = nil
	}
	for _, fs := range s.inherited {
		closeFiles(fs)
	}
	s.inherited = nil
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
		if now, err := os.Stat(s.path); err == nil && os.SameFile(now, fi) {
			_ = os.Remove(s.path)
		}
	}
	s.wg.Wait()
}

// peerCheck returns the peer's process id, and an error unless it runs as
// this process's user: whoever gets the listening sockets can answer every
// client.
func peerCheck(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, fmt.Errorf("peer credentials: %w", serr)
	}
	if int(cred.Uid) != os.Getuid() {
		return int(cred.Pid), fmt.Errorf("peer process %d runs as uid %d, not %d", cred.Pid, cred.Uid, os.Getuid())
	}
	return int(cred.Pid), nil
}

// maxMessage bounds one message of the exchange.
const maxMessage = 64 << 10

// writeMessage sends m, with files as SCM_RIGHTS, as one packet (the
// socket is SOCK_SEQPACKET: a message is read whole or not at all).
func writeMessage(c *net.UnixConn, m message, files []*os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(b, oob, nil)
	if err == nil && (n != len(b) || oobn != len(oob)) {
		err = io.ErrShortWrite
	}
	return err
}

// readMessage reads one message; with withFiles, the descriptors that came
// with it too (they are closed on an error).
func readMessage(c *net.UnixConn, withFiles bool) (message, []*os.File, error) {
	buf := make([]byte, maxMessage)
	var oob []byte
	if withFiles {
		oob = make([]byte, unix.CmsgSpace(4*maxSockets))
	}
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	var files []*os.File
	if oobn > 0 {
		files = parseRights(oob[:oobn])
	}
	if err != nil {
		closeFiles(files)
		return message{}, nil, err
	}
	if n == 0 {
		closeFiles(files)
		return message{}, nil, io.ErrUnexpectedEOF
	}
	var m message
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		closeFiles(files)
		return message{}, nil, fmt.Errorf("malformed message: %w", err)
	}
	return m, files, nil
}

func parseRights(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var files []*os.File
	for _, msg := range msgs {
		fds, err := unix.ParseUnixRights(&msg)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "inherited socket"))
		}
	}
	return files
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
