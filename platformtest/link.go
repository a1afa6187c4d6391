package platformtest

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Link is the path from one cluster's proxy to another's forward listener:
// a TCP relay in the test process that every forwarded request between the
// two crosses, so that a test can slow it or break it. A Link starts
// healthy.
type Link struct {
	From, To string

	ln     net.Listener
	target string

	mu      sync.Mutex
	delay   time.Duration
	cut     bool          // close every connection, refuse new ones
	held    chan struct{} // non-nil while partitioned: closed by Heal
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
	stopped bool
}

// Link returns the link from cluster from to cluster to.
func (p *Platform) Link(t TB, from, to string) *Link {
	t.Helper()
	if p.opts.NoLinks {
		t.Fatalf("platformtest: Link(%q, %q): the platform has no links (Options.NoLinks)", from, to)
	}
	l := p.links[[2]string{from, to}]
	if l == nil {
		t.Fatalf("platformtest: no link from %q to %q (clusters: %v)", from, to, p.opts.Clusters)
	}
	return l
}

func startLink(t TB, from, to *Cluster) *Link {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(from.IP, "0"))
	if err != nil {
		t.Fatalf("platformtest: relay from %s to %s: %v", from.Name, to.Name, err)
	}
	l := &Link{From: from.Name, To: to.Name, ln: ln, target: to.ForwardAddr, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	t.Cleanup(l.stop)
	return l
}

// Addr is the relay's address: the other cluster's forward address, as
// From's proxy knows it.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// Delay makes every chunk of data wait d before it is passed on, each way
// (0: none).
func (l *Link) Delay(d time.Duration) {
	l.mu.Lock()
	l.delay = d
	l.mu.Unlock()
}

// Cut closes every connection on the link and refuses new ones (they are
// closed as soon as they are accepted) until Heal: a link that fails fast.
func (l *Link) Cut() {
	l.mu.Lock()
	l.cut = true
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
}

// Partition stops every byte on the link, both ways, on the connections
// open and on new ones (accepted, never answered), until Heal: a link
// that fails by silence, as a network partition does. Data held meanwhile
// flows again after Heal.
func (l *Link) Partition() {
	l.mu.Lock()
	if l.held == nil {
		l.held = make(chan struct{})
	}
	l.mu.Unlock()
}

// Heal undoes Cut and Partition (not Delay).
func (l *Link) Heal() {
	l.mu.Lock()
	l.cut = false
	if l.held != nil {
		close(l.held)
		l.held = nil
	}
	l.mu.Unlock()
}

func (l *Link) stop() {
	l.mu.Lock()
	l.stopped = true
	l.ln.Close()
	for c := range l.conns {
		c.Close()
	}
	if l.held != nil {
		close(l.held)
		l.held = nil
	}
	l.mu.Unlock()
	l.wg.Wait()
}

func (l *Link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		if !l.track(c) {
			c.Close()
			continue
		}
		l.wg.Add(1)
		go l.relay(c)
	}
}

// track records c, unless the link is cut or stopped.
func (l *Link) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut || l.stopped {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *Link) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	c.Close()
}

func (l *Link) relay(in net.Conn) {
	defer l.wg.Done()
	defer l.untrack(in)
	if !l.pass() {
		return
	}
	out, err := net.DialTimeout("tcp", l.target, 5*time.Second)
	if err != nil || !l.track(out) {
		if out != nil {
			out.Close()
		}
		return
	}
	defer l.untrack(out)
	var wg sync.WaitGroup
	wg.Go(func() { l.copy(out, in) })
	l.copy(in, out)
	wg.Wait()
}

// copy passes src to dst, held by Partition and slowed by Delay: an end
// of src is passed on as a half close; any failure closes both.
func (l *Link) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !l.pass() {
				break
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if errors.Is(err, io.EOF) {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
				return
			}
			break
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

// pass waits out a partition and the delay; false when the link was cut
// or stopped meanwhile.
func (l *Link) pass() bool {
	for {
		l.mu.Lock()
		held, delay, cut, stopped := l.held, l.delay, l.cut, l.stopped
		l.mu.Unlock()
		if cut || stopped {
			return false
		}
		if held != nil {
			<-held
			continue
		}
		if delay > 0 {
			time.Sleep(delay)
		}
		return true
	}
}
