package main

import (
	"net/http"
	"net/http/pprof"
)

// handlePprof mounts the Go profiles (CPU, heap, goroutines, ...) on mux
// at /debug/pprof/, for --pprof.
func handlePprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
