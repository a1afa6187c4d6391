package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
)

// wsFrame builds a frame of payload n bytes (masked or not), the way a
// peer sends it.
func wsFrame(n int, masked bool) []byte {
	b := []byte{0x82}
	mask := byte(0)
	if masked {
		mask = 0x80
	}
	switch {
	case n < 126:
		b = append(b, mask|byte(n))
	case n <= 0xffff:
		b = append(b, mask|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, mask|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if masked {
		b = append(b, 1, 2, 3, 4)
	}
	return append(b, bytes.Repeat([]byte{0x7e}, n)...)
}

// TestWSFramesBoundaries: fed a stream of frames in chunks cut anywhere,
// the frame state is at a boundary exactly where a frame ends.
func TestWSFramesBoundaries(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var stream []byte
		ends := map[int]bool{0: true}
		for range 1 + r.IntN(6) {
			n := []int{0, 1, 125, 126, 127, 1000, 65535, 65536, 70000}[r.IntN(9)]
			stream = append(stream, wsFrame(n, r.IntN(2) == 0)...)
			ends[len(stream)] = true
		}
		var f wsFrames
		for pos := 0; pos < len(stream); {
			n := min(len(stream)-pos, 1+r.IntN(300))
			f.feed(stream[pos : pos+n])
			pos += n
			if f.boundary() != ends[pos] {
				t.Fatalf("round %d: at %d of %d, boundary %v, want %v", round, pos, len(stream), f.boundary(), ends[pos])
			}
		}
	}
}

// TestWSCloseWaitsForTheBoundary: asked to go away inside a frame, a
// direction writes its close frame (1001) right after that frame, never
// in it, and passes nothing after it.
func TestWSCloseWaitsForTheBoundary(t *testing.T) {
	for _, masked := range []bool{false, true} {
		var out bytes.Buffer
		d := newWSDirection(&out, masked)
		frame := wsFrame(1000, !masked)
		if _, err := d.Write(frame[:500]); err != nil {
			t.Fatal(err)
		}
		d.goAway()
		if out.Len() != 500 {
			t.Fatalf("masked %v: a close frame inside a frame: %d bytes out", masked, out.Len())
		}
		if _, err := d.Write(frame[500:]); !errors.Is(err, errGoneAway) {
			t.Fatalf("masked %v: the frame's end: %v, want errGoneAway", masked, err)
		}
		closeFrame := out.Bytes()[len(frame):]
		if closeFrame[0] != 0x88 {
			t.Fatalf("masked %v: after the frame % x, want a close frame", masked, closeFrame)
		}
		payload := closeFrame[2:]
		if masked {
			if closeFrame[1] != 0x82 {
				t.Fatalf("masked close frame header % x", closeFrame[:2])
			}
			key := payload[:4]
			payload = []byte{payload[4] ^ key[0], payload[5] ^ key[1]}
		} else if closeFrame[1] != 0x02 {
			t.Fatalf("close frame header % x", closeFrame[:2])
		}
		if code := binary.BigEndian.Uint16(payload); code != 1001 {
			t.Fatalf("masked %v: close status %d, want 1001", masked, code)
		}
		if n, err := d.Write(wsFrame(3, !masked)); n != 0 || !errors.Is(err, errGoneAway) {
			t.Fatalf("masked %v: a write after the close frame: %d, %v", masked, n, err)
		}
		select {
		case <-d.done:
		default:
			t.Fatal("done not closed")
		}
	}
}
