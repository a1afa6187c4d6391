// Package admin holds what both daemons' admin listeners serve alike: the
// Go profiler's routes and /debug/index/passed.
package admin

import (
	"net/http"
	"net/http/pprof"
)

// HandlePprof adds net/http/pprof's routes under /debug/pprof/ to mux.
func HandlePprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
