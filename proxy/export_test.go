package proxy

import "time"

// SignHop signs a hop mark as a proxy of cluster source would at now, for
// a bodiless request with method and target, with the first secret of
// secrets (a hop secret file's content).
func SignHop(secrets []byte, now time.Time, source, method, target, host, xff, proto, fhost, id string) string {
	keys, err := ParseHopKeys(secrets)
	if err != nil {
		panic(err)
	}
	s := &hopSigner{now: func() time.Time { return now }}
	s.keys.Store(keys)
	return s.sign(hopFields{Source: source, Method: method, Target: target, Host: host, For: xff, Proto: proto, FHost: fhost, RequestID: id})
}

// SignHopGen is SignHop for a request forwarded on a tombstone of
// generation gen.
func SignHopGen(secrets []byte, now time.Time, gen int64, source, method, target, host, xff, proto, fhost, id string) string {
	keys, err := ParseHopKeys(secrets)
	if err != nil {
		panic(err)
	}
	s := &hopSigner{now: func() time.Time { return now }}
	s.keys.Store(keys)
	return s.sign(hopFields{Source: source, Gen: gen, Method: method, Target: target, Host: host, For: xff, Proto: proto, FHost: fhost, RequestID: id})
}

// WithConnSlot gives ctx the slot of a client connection c, as the
// server's ConnContext does.
var WithConnSlot = withConnSlot

// SignLoop signs a loop signal (LoopHeader) naming cluster for the
// request with id requestID, as a peer proxy with secrets would.
func SignLoop(secrets []byte, cluster, requestID string) string {
	keys, err := ParseHopKeys(secrets)
	if err != nil {
		panic(err)
	}
	s := &hopSigner{now: time.Now}
	s.keys.Store(keys)
	return s.signLoop(cluster, requestID)
}
