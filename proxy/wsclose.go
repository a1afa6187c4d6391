package proxy

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"time"
)

// A WebSocket still open when a drain runs out of time is not cut in the
// middle: the proxy follows the frame boundaries of both directions (it
// reads only the frame headers, never a payload), and closes it the way
// the protocol does (RFC 6455, 5.5.1 and 7.4.1): a close frame with status
// 1001, going away, to the client, and the same, masked, to the
// container, each written between two of the peer's frames. Both then see
// a clean close, and a client reconnects (to the process that took over).

// errGoneAway ends a direction's copy once its close frame is written.
var errGoneAway = errors.New("websocket closed by the proxy (going away)")

// wsFrames follows the frame boundaries of one direction of a WebSocket.
type wsFrames struct {
	need uint64   // payload bytes of the current frame still to pass
	hdr  [14]byte // the header being read
	nhdr int
	want int // the header's length, once its second byte is known
}

// feed moves the state past b.
func (f *wsFrames) feed(b []byte) {
	for len(b) > 0 {
		if f.need > 0 {
			n := uint64(len(b))
			if n > f.need {
				n = f.need
			}
			f.need -= n
			b = b[n:]
			continue
		}
		f.hdr[f.nhdr] = b[0]
		f.nhdr++
		b = b[1:]
		if f.nhdr == 2 {
			f.want = 2
			switch f.hdr[1] & 0x7f {
			case 126:
				f.want += 2
			case 127:
				f.want += 8
			}
			if f.hdr[1]&0x80 != 0 {
				f.want += 4 // the masking key
			}
		}
		if f.nhdr >= 2 && f.nhdr == f.want {
			switch n := f.hdr[1] & 0x7f; n {
			case 126:
				f.need = uint64(binary.BigEndian.Uint16(f.hdr[2:4]))
			case 127:
				f.need = binary.BigEndian.Uint64(f.hdr[2:10])
			default:
				f.need = uint64(n)
			}
			f.nhdr, f.want = 0, 0
		}
	}
}

// boundary reports whether the next byte would start a frame.
func (f *wsFrames) boundary() bool { return f.need == 0 && f.nhdr == 0 }

// wsDirection is one direction of a WebSocket the proxy copies: its
// writes go through write, which keeps the frame state and, once asked,
// writes a close frame at the first boundary.
type wsDirection struct {
	dst    io.Writer
	masked bool // towards the container: a client's frames are masked

	mu      sync.Mutex
	frames  wsFrames
	pending bool // goAway was asked, and the stream was inside a frame
	closed  bool // the close frame is written: nothing more passes
	done    chan struct{}
}

func newWSDirection(dst io.Writer, masked bool) *wsDirection {
	return &wsDirection{dst: dst, masked: masked, done: make(chan struct{})}
}

// Write passes b on, then writes the close frame if one is due and the
// stream is at a boundary.
func (d *wsDirection) Write(b []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, errGoneAway
	}
	n, err := d.dst.Write(b)
	d.frames.feed(b[:n])
	if err != nil {
		return n, err
	}
	if d.pending && d.frames.boundary() {
		if err := d.closeLocked(); err != nil {
			return n, err
		}
		return n, errGoneAway
	}
	return n, nil
}

// CloseWrite half-closes the destination (a peer's half-close, passed on).
func (d *wsDirection) CloseWrite() error {
	if cw, ok := d.dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// goAway writes the close frame now when the stream is between frames,
// or marks it due at the next boundary.
func (d *wsDirection) goAway() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	if !d.frames.boundary() {
		d.pending = true
		return
	}
	_ = d.closeLocked()
}

// closeLocked writes a close frame with status 1001.
func (d *wsDirection) closeLocked() error {
	d.closed = true
	defer close(d.done)
	payload := []byte{0x03, 0xe9} // 1001, going away
	if !d.masked {
		_, err := d.dst.Write(append([]byte{0x88, byte(len(payload))}, payload...))
		return err
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	frame := append([]byte{0x88, 0x80 | byte(len(payload))}, key[:]...)
	for i, c := range payload {
		frame = append(frame, c^key[i%4])
	}
	_, err := d.dst.Write(frame)
	return err
}

// goAway closes j as the protocol does (j is a WebSocket): a close frame
// each way at the next frame boundary; each peer answers with its own
// close frame and hangs up, which ends its direction's copy, and the last
// one closes both connections. Whatever has not ended within wait is
// closed then.
func (j *joined) goAway(wait time.Duration) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	// A direction's write in progress (to a peer that does not read)
	// holds it: ask in the background, and let the deadline's close end
	// such a write.
	asked := make(chan struct{})
	go func() {
		defer close(asked)
		j.wsDown.goAway()
		j.wsUp.goAway()
	}()
	for j.running.Load() > 0 {
		select {
		case <-deadline.C:
			j.close()
			<-asked
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	<-asked
}
