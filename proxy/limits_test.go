package proxy

import (
	"bytes"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestResetCounterSeesSplitPrefaces: the h2c sniff and the frame count
// hold however the client splits its bytes, down to one byte per read.
func TestResetCounterSeesSplitPrefaces(t *testing.T) {
	var stream bytes.Buffer
	stream.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&stream, nil)
	_ = fr.WriteSettings()
	for id := uint32(1); id < 2*(resetBurst+10); id += 2 {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte{0x82}, EndStream: true, EndHeaders: true})
		_ = fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	for _, chunk := range []int{1, 3, 7, 4096} {
		client, server := net.Pipe()
		c := &guardConn{Conn: server, raw: server, cuts: new(atomic.Uint64)}
		go func() {
			b := stream.Bytes()
			for len(b) > 0 {
				n := min(chunk, len(b))
				if _, err := client.Write(b[:n]); err != nil {
					return
				}
				b = b[n:]
			}
		}()
		var err error
		buf := make([]byte, 4096)
		deadline := time.Now().Add(5 * time.Second)
		for err == nil && time.Now().Before(deadline) {
			_, err = c.Read(buf[:min(chunk, len(buf))])
		}
		if err != errTooManyResets {
			t.Errorf("read in %d-byte pieces: %v, want the connection cut for resets", chunk, err)
		}
		client.Close()
		server.Close()
	}
}
