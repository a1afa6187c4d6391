package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// HopHeader carries the hop mark of a request forwarded by a tombstone.
//
// Its value is "v1;<source cluster>;<unix seconds>;<signature>", where the
// signature is base64url(HMAC-SHA256(secret, fields)) over the version,
// the source cluster, the timestamp, the Host, and the forwarding headers
// the source set (X-Forwarded-For, -Proto, -Host, X-Request-Id). A
// receiving proxy that verifies it trusts those headers and never forwards
// the request again; anything else is stripped, with the headers it would
// have vouched for.
const HopHeader = "Replproxy-Hop"

// HopSkew is how far a hop mark's timestamp may be from the receiver's
// clock, either way.
const HopSkew = 30 * time.Second

// hopSigner signs and verifies hop marks with the secret the clusters
// share.
type hopSigner struct {
	secret []byte
	now    func() time.Time
	macs   sync.Pool // of hash.Hash: keyed HMAC-SHA256, reset before use
}

// hopFields are what a hop mark vouches for.
type hopFields struct {
	Source    string // the cluster that forwarded the request
	Host      string
	For       string // X-Forwarded-For as sent
	Proto     string // X-Forwarded-Proto as sent
	FHost     string // X-Forwarded-Host as sent
	RequestID string
}

var errHop = errors.New("invalid hop mark")

func (s *hopSigner) mac(ts int64, f hopFields) string {
	fields := [...]string{"v1", f.Source, strconv.FormatInt(ts, 10), f.Host, f.For, f.Proto, f.FHost, f.RequestID}
	return s.sum(fields[:])
}

// sum is the keyed HMAC-SHA256 of fields, base64url. Every field is
// length-prefixed, so no two different field lists write the same bytes;
// the first field names what is signed, so a mark of one kind never
// verifies as another.
func (s *hopSigner) sum(fields []string) string {
	m, _ := s.macs.Get().(hash.Hash)
	if m == nil {
		m = hmac.New(sha256.New, s.secret)
	}
	defer func() { m.Reset(); s.macs.Put(m) }()
	var buf [512]byte
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
// "loop1;<cluster>;<signature>". Bound to the request id, it cannot be
// replayed for another request, and no container can make one.
func (s *hopSigner) signLoop(cluster, requestID string) string {
	return "loop1;" + cluster + ";" + s.sum([]string{"loop1", cluster, requestID})
}

// verifyLoop returns the cluster a LoopHeader value names, when it was
// signed by a peer for the request with id requestID; "" otherwise.
func (s *hopSigner) verifyLoop(v, requestID string) string {
	kind, rest, _ := strings.Cut(v, ";")
	cluster, sig, ok := strings.Cut(rest, ";")
	if kind != "loop1" || !ok || !hmac.Equal([]byte(s.sum([]string{"loop1", cluster, requestID})), []byte(sig)) {
		return ""
	}
	return cluster
}

// sign returns the hop header value for f, stamped now.
func (s *hopSigner) sign(f hopFields) string {
	ts := s.now().Unix()
	return "v1;" + f.Source + ";" + strconv.FormatInt(ts, 10) + ";" + s.mac(ts, f)
}

// verify checks a hop header value against the request's fields (Source is
// taken from the mark) and returns the source cluster.
func (s *hopSigner) verify(mark string, f hopFields) (string, error) {
	parts := strings.Split(mark, ";")
	if len(parts) != 4 || parts[0] != "v1" {
		return "", fmt.Errorf("%w: want v1;<cluster>;<time>;<signature>", errHop)
	}
	ts, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return "", fmt.Errorf("%w: bad timestamp", errHop)
	}
	if d := s.now().Sub(time.Unix(ts, 0)); d > HopSkew || d < -HopSkew {
		return "", fmt.Errorf("%w: timestamp %s off by %s (allowed %s)", errHop, time.Unix(ts, 0).UTC().Format(time.RFC3339), d.Round(time.Second), HopSkew)
	}
	f.Source = parts[1]
	if !hmac.Equal([]byte(s.mac(ts, f)), []byte(parts[3])) {
		return "", fmt.Errorf("%w: bad signature", errHop)
	}
	return f.Source, nil
}

// forwarded reports whether r carries a hop mark that verifies: another
// cluster's proxy forwarded it. It leaves the mark for checkHop.
func (h *Handler) forwarded(r *http.Request) bool {
	mark := r.Header.Get(HopHeader)
	if mark == "" {
		return false
	}
	_, err := h.hop.verify(mark, receivedHopFields(r))
	return err == nil
}

// hopFieldsOf returns what a received request's hop mark must vouch for.
func receivedHopFields(r *http.Request) hopFields {
	return hopFields{
		Host:      r.Host,
		For:       strings.Join(r.Header.Values("X-Forwarded-For"), ", "),
		Proto:     r.Header.Get("X-Forwarded-Proto"),
		FHost:     r.Header.Get("X-Forwarded-Host"),
		RequestID: r.Header.Get("X-Request-Id"),
	}
}

// checkHop verifies and strips the hop mark, and settles the request id.
func (h *Handler) checkHop(r *http.Request, ex *exchange) {
	mark := r.Header.Get(HopHeader)
	if mark != "" {
		r.Header.Del(HopHeader)
		src, err := h.hop.verify(mark, receivedHopFields(r))
		if err == nil {
			ex.trusted, ex.source = true, src
		} else if ce := h.logger.Check(zapcore.DebugLevel, "hop mark ignored"); ce != nil {
			ce.Write(zap.String("host", r.Host), zap.String("remote", r.RemoteAddr), zap.Error(err))
		}
	}
	if id := r.Header.Get("X-Request-Id"); ex.trusted && validRequestID(id) {
		ex.id = id
	} else {
		ex.id = h.ids.next()
	}
}
