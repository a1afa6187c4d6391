package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// HopHeader carries the hop mark of a request forwarded by a tombstone.
//
// Its value is "v2;<key id>;<source cluster>;<unix seconds>;<generation>;<signature>",
// where the signature is base64url(HMAC-SHA256(key, fields)) over the
// version, the key id, the source cluster, the timestamp, the generation
// of the tombstone the request was forwarded on, the method, the
// request target, the body's Content-Length (when it has one), the Host, and the
// forwarding headers the source set (X-Forwarded-For, -Proto, -Host,
// X-Request-Id). A receiving proxy that verifies it, and has not seen it
// before (replayCache), trusts those headers and never forwards the
// request again; anything else is stripped, with the headers it would
// have vouched for.
const HopHeader = "Replproxy-Hop"

// HopSkew is how far a hop mark's timestamp may be from the receiver's
// clock, either way.
const HopSkew = 30 * time.Second

// hopSigner signs and verifies hop marks with the keys the clusters share.
type hopSigner struct {
	keys atomic.Pointer[HopKeys]
	now  func() time.Time
	seen replayCache
}

// HopKeys are the secrets that sign and verify hop marks: the first signs,
// every one verifies, so that a new secret can be rolled out to every
// cluster before any of them signs with it (see the README, "Rotating the
// hop secret"). Each is known by its key id, the first 8 hex digits of
// its SHA-256, which a mark names.
type HopKeys struct {
	keys []*hopKey // keys[0] signs
}

type hopKey struct {
	id     string
	secret []byte
	macs   sync.Pool // of hash.Hash: keyed HMAC-SHA256, reset before use
}

// maxHopKeys bounds the secrets of a hop secret file: the one in use, the
// next, and one being retired.
const maxHopKeys = 3

// ParseHopKeys reads a hop secret file: one secret (32 bytes or more; the
// line, its ends trimmed) per line, the one that signs first; blank lines
// and lines starting with # are skipped.
func ParseHopKeys(data []byte) (*HopKeys, error) {
	k := &HopKeys{}
	seen := map[string]int{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		n := i + 1
		if len(line) < 32 {
			return nil, fmt.Errorf("hop secret line %d is %d bytes, need at least 32: write one with `head -c 32 /dev/urandom | base64`", n, len(line))
		}
		sum := sha256.Sum256([]byte(line))
		id := hex.EncodeToString(sum[:4])
		if first, dup := seen[id]; dup {
			return nil, fmt.Errorf("hop secret line %d repeats line %d", n, first)
		}
		seen[id] = n
		k.keys = append(k.keys, &hopKey{id: id, secret: []byte(line)})
	}
	switch {
	case len(k.keys) == 0:
		return nil, errors.New("no hop secret: write one with `head -c 32 /dev/urandom | base64 > hop.secret` and give the same file to every cluster")
	case len(k.keys) > maxHopKeys:
		return nil, fmt.Errorf("%d hop secrets, at most %d: the one that signs, the next, and one being retired", len(k.keys), maxHopKeys)
	}
	return k, nil
}

// IDs returns the key ids, the signing one first.
func (k *HopKeys) IDs() []string {
	ids := make([]string, len(k.keys))
	for i, key := range k.keys {
		ids[i] = key.id
	}
	return ids
}

func (k *HopKeys) byID(id string) *hopKey {
	for _, key := range k.keys {
		if key.id == id {
			return key
		}
	}
	return nil
}

// hopFields are what a hop mark vouches for.
type hopFields struct {
	Source    string // the cluster that forwarded the request
	Gen       int64  // the generation of the tombstone it forwarded on
	Method    string
	Target    string // the request target as sent (RequestURI)
	Length    int64  // the body's Content-Length; 0: none, -1: unknown (chunked)
	Host      string
	For       string // X-Forwarded-For as sent
	Proto     string // X-Forwarded-Proto as sent
	FHost     string // X-Forwarded-Host as sent
	RequestID string
}

var errHop = errors.New("invalid hop mark")

// Why a hop mark was refused, for replproxy_hop_marks_refused_total.
const (
	hopMalformed = "malformed"
	hopSkewed    = "skew"
	hopUnknown   = "unknown_key"
	hopSignature = "signature"
	hopReplayed  = "replay"
	hopFull      = "replay_cache_full"
	hopPeer      = "peer" // with mutual TLS: not from the cluster the peer certificate names
)

// hopError is a refused mark, with why.
type hopError struct {
	reason string
	detail string
}

func (e *hopError) Error() string { return errHop.Error() + ": " + e.detail }
func (e *hopError) Unwrap() error { return errHop }

func (k *hopKey) mac(ts int64, f hopFields) string {
	fields := [...]string{"v2", k.id, f.Source, strconv.FormatInt(ts, 10), strconv.FormatInt(f.Gen, 10), f.Method, f.Target, signedLength(f.Length),
		f.Host, f.For, f.Proto, f.FHost, f.RequestID}
	return k.sum(fields[:])
}

// signedLength is the body length as a mark signs it: a Content-Length,
// or "none" for no body and a body of unknown length alike (net/http may
// send an empty body of unknown length as none at all).
func signedLength(n int64) string {
	if n > 0 {
		return strconv.FormatInt(n, 10)
	}
	return "none"
}

// sum is the keyed HMAC-SHA256 of fields, base64url. Every field is
// length-prefixed, so no two different field lists write the same bytes;
// the first field names what is signed, so a mark of one kind never
// verifies as another.
func (k *hopKey) sum(fields []string) string {
	m, _ := k.macs.Get().(hash.Hash)
	if m == nil {
		m = hmac.New(sha256.New, k.secret)
	}
	defer func() { m.Reset(); k.macs.Put(m) }()
	var buf [1024]byte
	b := buf[:0]
	for _, v := range fields {
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	m.Write(b)
	var sum [sha256.Size]byte
	return base64.RawURLEncoding.EncodeToString(m.Sum(sum[:0]))
}

// signLoop returns the LoopHeader value that says, for the request with
// id requestID, that this proxy's tombstone names cluster:
// "loop2;<key id>;<cluster>;<signature>". Bound to the request id, it
// cannot be replayed for another request, and no container can make one.
func (s *hopSigner) signLoop(cluster, requestID string) string {
	k := s.keys.Load().keys[0]
	return "loop2;" + k.id + ";" + cluster + ";" + k.sum([]string{"loop2", k.id, cluster, requestID})
}

// verifyLoop returns the cluster a LoopHeader value names, when it was
// signed by a peer for the request with id requestID; "" otherwise.
func (s *hopSigner) verifyLoop(v, requestID string) string {
	kind, rest, _ := strings.Cut(v, ";")
	id, rest, _ := strings.Cut(rest, ";")
	cluster, sig, ok := strings.Cut(rest, ";")
	k := s.keys.Load().byID(id)
	if kind != "loop2" || !ok || k == nil || !hmac.Equal([]byte(k.sum([]string{"loop2", id, cluster, requestID})), []byte(sig)) {
		return ""
	}
	return cluster
}

// sign returns the hop header value for f, stamped now.
func (s *hopSigner) sign(f hopFields) string {
	k := s.keys.Load().keys[0]
	ts := s.now().Unix()
	return "v2;" + k.id + ";" + f.Source + ";" + strconv.FormatInt(ts, 10) + ";" + strconv.FormatInt(f.Gen, 10) + ";" + k.mac(ts, f)
}

// verify checks a hop header value against the request's fields (Source is
// taken from the mark) and returns the source cluster. A mark that
// verifies is remembered, and refused when it comes again (replayCache).
func (s *hopSigner) verify(mark string, f hopFields) (string, error) {
	f, err := s.verifyFields(mark, f)
	return f.Source, err
}

// verifyFields is verify returning the mark's fields: Source and Gen, the
// generation of the tombstone the request was forwarded on.
func (s *hopSigner) verifyFields(mark string, f hopFields) (hopFields, error) {
	parts := strings.Split(mark, ";")
	if len(parts) != 6 || parts[0] != "v2" {
		return hopFields{}, &hopError{hopMalformed, "want v2;<key id>;<cluster>;<time>;<generation>;<signature>"}
	}
	ts, err := strconv.ParseInt(parts[3], 10, 64)
	if err != nil {
		return hopFields{}, &hopError{hopMalformed, "bad timestamp"}
	}
	now := s.now()
	if d := now.Sub(time.Unix(ts, 0)); d > HopSkew || d < -HopSkew {
		return hopFields{}, &hopError{hopSkewed, fmt.Sprintf("timestamp %s off by %s (allowed %s)", time.Unix(ts, 0).UTC().Format(time.RFC3339), d.Round(time.Second), HopSkew)}
	}
	k := s.keys.Load().byID(parts[1])
	if k == nil {
		return hopFields{}, &hopError{hopUnknown, fmt.Sprintf("key %q is not one of this proxy's hop secrets (%v)", parts[1], s.keys.Load().IDs())}
	}
	f.Source = parts[2]
	if f.Gen, err = strconv.ParseInt(parts[4], 10, 64); err != nil || f.Gen < 0 {
		return hopFields{}, &hopError{hopMalformed, "bad generation"}
	}
	sig := parts[5]
	if !hmac.Equal([]byte(k.mac(ts, f)), []byte(sig)) {
		return hopFields{}, &hopError{hopSignature, "bad signature"}
	}
	switch s.seen.first(sig, time.Unix(ts, 0).Add(HopSkew), now) {
	case seenBefore:
		return hopFields{}, &hopError{hopReplayed, "seen before (a replay)"}
	case seenFull:
		return hopFields{}, &hopError{hopFull, fmt.Sprintf("the replay cache is full (%d marks)", maxReplayEntries)}
	}
	return f, nil
}

// forwarded reports whether r carries a hop mark that verifies: another
// cluster's proxy forwarded it. The verdict goes with the request (the
// mark is good once: replayCache), for checkHop.
func (h *Handler) forwarded(r *http.Request) (*http.Request, bool) {
	if r.Header.Get(HopHeader) == "" {
		return r, false
	}
	v := h.verifyHop(r)
	return r.WithContext(context.WithValue(r.Context(), hopVerdictKey{}, v)), v.err == nil
}

type hopVerdictKey struct{}

// hopVerdict is what verifying a request's hop mark found.
type hopVerdict struct {
	source string
	gen    int64 // the generation of the tombstone the source forwarded on
	err    error
}

func (h *Handler) verifyHop(r *http.Request) *hopVerdict {
	f, err := h.hop.verifyFields(r.Header.Get(HopHeader), receivedHopFields(r))
	src := f.Source
	if err == nil && h.cfg.Peers != nil {
		// With mutual TLS, a mark speaks only for the peer that brought it.
		if peer := h.cfg.Peers.PeerCluster(r.TLS); peer != src {
			err = &hopError{hopPeer, fmt.Sprintf("a mark from cluster %s on a connection from %q (mutual TLS names the peer)", src, peer)}
			src = ""
		}
	}
	if err != nil {
		var he *hopError
		if errors.As(err, &he) {
			h.metrics.hopMarkRefused(he.reason)
		}
		if ce := h.logger.Check(zapcore.DebugLevel, "hop mark refused"); ce != nil {
			ce.Write(zap.String("host", r.Host), zap.String("remote", r.RemoteAddr), zap.Error(err))
		}
	}
	return &hopVerdict{source: src, gen: f.Gen, err: err}
}

// receivedHopFields returns what a received request's hop mark must vouch
// for.
func receivedHopFields(r *http.Request) hopFields {
	return hopFields{
		Method:    r.Method,
		Target:    r.RequestURI,
		Length:    r.ContentLength,
		Host:      r.Host,
		For:       strings.Join(r.Header.Values("X-Forwarded-For"), ", "),
		Proto:     r.Header.Get("X-Forwarded-Proto"),
		FHost:     r.Header.Get("X-Forwarded-Host"),
		RequestID: r.Header.Get("X-Request-Id"),
	}
}

// checkHop verifies (unless forwarded did) and strips the hop mark, and
// settles the request id.
func (h *Handler) checkHop(r *http.Request, ex *exchange) {
	if r.Header.Get(HopHeader) != "" {
		v, _ := r.Context().Value(hopVerdictKey{}).(*hopVerdict)
		if v == nil {
			v = h.verifyHop(r)
		}
		r.Header.Del(HopHeader)
		if v.err == nil {
			ex.trusted, ex.source, ex.hopGen = true, v.source, v.gen
		}
	}
	if id := r.Header.Get("X-Request-Id"); ex.trusted && validRequestID(id) {
		ex.id = id
	} else {
		ex.id = h.ids.next()
	}
}

// replayCache remembers the hop marks accepted until they expire (their
// timestamp plus HopSkew), so that each is accepted once: a mark captured
// on the way, sent again, is refused. Marks are kept by the first 8 bytes
// of their signature, in one set per HopSkew of expiry, the expired sets
// dropped whole: about 20 bytes a mark, at most maxReplayEntries (one
// million: 16,000 forwarded requests a second for the minute a mark can
// live). Full, it refuses marks rather than forget them.
type replayCache struct {
	mu   sync.Mutex
	sets map[int64]map[uint64]struct{} // by expiry / HopSkew
	n    int
}

const maxReplayEntries = 1 << 20

type seenResult int

const (
	seenFirst seenResult = iota
	seenBefore
	seenFull
)

// first records sig, a mark's signature that expires at expiry, and
// reports whether it is new.
func (c *replayCache) first(sig string, expiry, now time.Time) seenResult {
	var key uint64
	if b, err := base64.RawURLEncoding.DecodeString(sig); err == nil && len(b) >= 8 {
		key = binary.BigEndian.Uint64(b)
	}
	slot := expiry.Unix() / int64(HopSkew/time.Second)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sets == nil {
		c.sets = make(map[int64]map[uint64]struct{})
	}
	for s, set := range c.sets {
		if (s+1)*int64(HopSkew/time.Second) < now.Unix() { // every mark in it has expired
			c.n -= len(set)
			delete(c.sets, s)
		}
	}
	set := c.sets[slot]
	if _, ok := set[key]; ok {
		return seenBefore
	}
	if c.n >= maxReplayEntries {
		return seenFull
	}
	if set == nil {
		set = make(map[uint64]struct{})
		c.sets[slot] = set
	}
	set[key] = struct{}{}
	c.n++
	return seenFirst
}
