package proxy

import (
	"bufio"
	"net"
	"net/http"
	"sync"
)

// recorder wraps the client's ResponseWriter to learn the status and the
// bytes written, and to track hijacked (upgraded) connections. It passes
// flushes and hijacks through, and Unwrap lets http.ResponseController
// reach the rest.
type recorder struct {
	http.ResponseWriter
	status   int
	bytes    int64
	upgrades *upgrades
}

var recorderPool = sync.Pool{New: func() any { return new(recorder) }}

func newRecorder(w http.ResponseWriter, u *upgrades) *recorder {
	rec := recorderPool.Get().(*recorder)
	*rec = recorder{ResponseWriter: w, upgrades: u}
	return rec
}

func (rec *recorder) release() {
	*rec = recorder{}
	recorderPool.Put(rec)
}

func (rec *recorder) WriteHeader(code int) {
	if rec.status == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		rec.status = code
	}
	rec.ResponseWriter.WriteHeader(code)
}

func (rec *recorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	n, err := rec.ResponseWriter.Write(b)
	rec.bytes += int64(n)
	return n, err
}

func (rec *recorder) Flush() {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	_ = http.NewResponseController(rec.ResponseWriter).Flush()
}

// Hijack hands the connection over (a protocol upgrade) and tracks it
// until it is closed, so shutdown can wait for it and metrics count it.
func (rec *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(rec.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	return rec.upgrades.track(conn), brw, nil
}

func (rec *recorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }
