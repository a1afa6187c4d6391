package proxy

import "time"

// SignHop signs a hop mark as a proxy of cluster source would at now.
func SignHop(secret []byte, now time.Time, source, host, xff, proto, fhost, id string) string {
	s := &hopSigner{secret: secret, now: func() time.Time { return now }}
	return s.sign(hopFields{Source: source, Host: host, For: xff, Proto: proto, FHost: fhost, RequestID: id})
}
