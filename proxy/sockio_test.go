package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// sockPair returns both ends of a loopback TCP connection, the first
// read and written through a sockIO.
func sockPair(t *testing.T) (*sockIO, *net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	s := newSockIO(c.(*net.TCPConn))
	if s == nil {
		t.Fatal("no sockIO for a TCP connection")
	}
	return s, c.(*net.TCPConn), peer.(*net.TCPConn)
}

// TestSockIOIsNetConn: a sockIO's reads and writes say what a
// net.Conn's would: the bytes, io.EOF at the end, a timeout past the
// deadline, net.ErrClosed once closed, ECONNRESET for a reset, with the
// Op of a Read or a Write; a write larger than the socket's buffers
// waits for room and completes.
func TestSockIOIsNetConn(t *testing.T) {
	t.Run("bytes and end", func(t *testing.T) {
		s, _, peer := sockPair(t)
		if _, err := peer.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		if n, err := s.Read(buf); err != nil || string(buf[:n]) != "hello" {
			t.Fatalf("read %q, %v; want hello", buf[:n], err)
		}
		if n, err := s.Write([]byte("world")); n != 5 || err != nil {
			t.Fatalf("write: %d, %v", n, err)
		}
		if n, err := io.ReadFull(peer, buf[:5]); err != nil || string(buf[:n]) != "world" {
			t.Fatalf("peer read %q, %v; want world", buf[:n], err)
		}
		if n, err := s.Read(nil); n != 0 || err != nil {
			t.Fatalf("empty read: %d, %v; want 0, nil", n, err)
		}
		_ = peer.CloseWrite()
		if n, err := s.Read(buf); n != 0 || err != io.EOF {
			t.Fatalf("read at the end: %d, %v; want io.EOF", n, err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		s, c, _ := sockPair(t)
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := s.Read(make([]byte, 16))
		var ne net.Error
		var oe *net.OpError
		if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &oe) || oe.Op != "read" {
			t.Fatalf("read past the deadline: %v; want a read timeout", err)
		}
	})
	t.Run("closed while reading", func(t *testing.T) {
		s, c, _ := sockPair(t)
		done := make(chan error, 1)
		go func() {
			_, err := s.Read(make([]byte, 16))
			done <- err
		}()
		time.Sleep(10 * time.Millisecond) // most likely waiting by then; either way it must end
		c.Close()
		if err := <-done; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read of a closed connection: %v; want net.ErrClosed", err)
		}
		if _, err := s.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write to a closed connection: %v; want net.ErrClosed", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		s, _, peer := sockPair(t)
		_ = peer.SetLinger(0)
		peer.Close() // RST: a read before it arrives waits for it
		_, err := s.Read(make([]byte, 16))
		var oe *net.OpError
		if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &oe) || oe.Op != "read" || !isReset(err) {
			t.Fatalf("read after a reset: %v; want a read ECONNRESET", err)
		}
	})
	t.Run("large write waits for room", func(t *testing.T) {
		s, _, peer := sockPair(t)
		big := make([]byte, 8<<20)
		for i := range big {
			big[i] = byte(i)
		}
		got := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(io.LimitReader(peer, int64(len(big))))
			got <- b
		}()
		if n, err := s.Write(big); n != len(big) || err != nil {
			t.Fatalf("write: %d, %v; want %d", n, err, len(big))
		}
		if b := <-got; len(b) != len(big) || b[len(b)-1] != big[len(big)-1] || b[12345] != big[12345] {
			t.Fatalf("peer read %d bytes, want %d as written", len(b), len(big))
		}
	})
}
