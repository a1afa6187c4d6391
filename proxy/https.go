package proxy

import (
	"crypto/tls"
	"net/http"
	"strconv"
)

// OnDemand is what a Server needs of certificates on demand
// (ondemand.Manager, which says so in its tests).
type OnDemand interface {
	// GetCertificate is the HTTPS listener's tls.Config.GetCertificate,
	// TLS-ALPN-01 challenges included. It returns nil, nil for names it
	// does not serve, which get the static certificate, if any.
	GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error)
	// HasCertificate reports whether host has a certificate: plain HTTP
	// requests for it are redirected to HTTPS, and HTTPS responses for it
	// carry HSTS.
	HasCertificate(host string) bool
	// HTTPHandler wraps the plain listener's handler: it answers ACME
	// HTTP-01 challenges and hands every other request to next.
	HTTPHandler(next http.Handler) http.Handler
}

// toHTTPS wraps the plain listener's handler: requests for hosts with a
// certificate are redirected to HTTPS, except those forwarded by another
// cluster's proxy (a hop mark that verifies): their client is that proxy.
func (s *Server) toHTTPS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.onDemand.HasCertificate(r.Host) {
			r2, forwarded := s.handler.forwarded(r)
			if !forwarded {
				s.handler.redirectToHTTPS(w, r, s.cfg.HTTPSPort)
				return
			}
			r = r2
		}
		next.ServeHTTP(w, r)
	})
}

// redirectToHTTPS sends the client to the same URL over HTTPS on port,
// with the Host in its canonical form.
func (h *Handler) redirectToHTTPS(w http.ResponseWriter, r *http.Request, port int) {
	key, _ := h.cfg.Zone.ParseName(r.Host) // HasCertificate parsed it already
	host := h.cfg.Zone.Format(key)
	if port != 443 {
		host += ":" + strconv.Itoa(port)
	}
	code := http.StatusMovedPermanently
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		code = http.StatusPermanentRedirect // keeps the method and body
	}
	http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), code)
}

// withHSTS wraps the HTTPS listener's handler: responses for hosts with a
// certificate carry Strict-Transport-Security (set before the repl
// answers, so it comes first and wins over one the repl sends).
func (s *Server) withHSTS(next http.Handler) http.Handler {
	if s.hsts == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && s.onDemand.HasCertificate(r.Host) {
			w.Header().Set("Strict-Transport-Security", s.hsts)
		}
		next.ServeHTTP(w, r)
	})
}
