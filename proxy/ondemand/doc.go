// Package ondemand is replproxy's TLS on demand: per-owner wildcard
// certificates (*.<owner>.<zone>, *.id.<zone>) ordered through ACME DNS-01,
// whose TXT records replns serves from the cluster's store, and custom
// domains through golang.org/x/crypto/acme/autocert, for linked domains
// only; both cached in the cluster's store, shared by all its proxies.
//
// A Manager is built by New from a Config, the cluster's Store and the
// Routes that decide which names may get a certificate. The proxy's
// Server consumes it as a proxy.OnDemand: GetCertificate for the HTTPS
// listener, HTTPHandler for the ACME HTTP-01 answers on the plain one,
// and HasCertificate, with which the proxy decides its redirects to HTTPS
// and HSTS. Run does the background work (renewals).
package ondemand
