package nameserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/ratelog"
	"github.com/replproxy/replproxy/store"
)

// Handler answers DNS queries for the zone, authoritatively, from a
// Source. It implements dns.Handler; Server calls it more directly.
//
// The handler makes no context per query (that would cost allocations on
// every query): a lookup that reaches a store is bounded by the route
// cache's LoadTimeout.
type Handler struct {
	cfg      Config
	zone     store.Zone
	zoneWire []byte
	src      Source
	logger   *zap.Logger
	qlog     *zap.Logger
	cookies  cookieKey
	rrl      *limiter
	metrics  *Metrics
	now      func() time.Time

	ttl, challengeTTL, soaTTL, negTTL uint32

	targets atomic.Pointer[map[string]*target] // by cluster name (SetClusters)
	z       atomic.Pointer[zoneRecords]        // SetStatic
	zoneMu  sync.Mutex                         // orders SetStatic calls

	scratch  sync.Pool
	queryN   atomic.Uint64    // for sampling the query log
	failLogs *ratelog.Limiter // SERVFAIL lines: one a second
}

// target is what a repl hosted by one cluster is answered with: its A and
// AAAA records, ready to copy (owner: a pointer to the question).
type target struct {
	a, aaaa   []byte
	nA, nAAAA uint16
	name      string
}

// zoneRecords are the SOA, NS, glue and static apex records, ready; a
// reload replaces them whole (SetStatic), and each query reads one.
type zoneRecords struct {
	hosts  map[string]*staticSet // in-zone name servers, by lower-case name
	apex   staticSet
	ns     []wireName // NS records, in order
	glue   []*staticSet
	soaRR  []byte // SOA RDATA after MNAME and RNAME
	mname  wireName
	rname  wireName
	serial uint32
	key    string // the records they were made from, to tell a change
}

// staticSet is the static records of one name (the apex or an in-zone name
// server), by type, with their RDATA ready.
type staticSet struct {
	name    wireName
	records map[uint16][][]byte
}

// scratch is one query's working memory, reused through a sync.Pool.
type scratch struct {
	q      query
	req    []byte
	resp   []byte
	name   []byte
	cookie []byte
	txt    []string
	wire   []byte // a TCP reply after its length
}

// NewHandler checks cfg and returns a Handler answering from src, counting
// queries, latency and rate-limited replies in metrics (nil: none). now is
// the clock of cookies, rate limits and latencies; nil means time.Now. A
// nil logger means zap.NewNop().
func NewHandler(cfg Config, src Source, metrics *Metrics, now func() time.Time, logger *zap.Logger) (*Handler, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	zone, _ := store.NewZone(cfg.Zone) // checked by withDefaults
	h := &Handler{
		cfg:          cfg,
		zone:         zone,
		zoneWire:     appendWireName(nil, zone.Name()),
		src:          src,
		logger:       logger.Named("dns"),
		qlog:         logger.Named("query"),
		cookies:      newCookieKey(cfg.CookieSecret),
		rrl:          newLimiter(cfg.RRL),
		metrics:      metrics,
		now:          now,
		failLogs:     ratelog.New(time.Second),
		ttl:          seconds(cfg.TTL),
		challengeTTL: seconds(cfg.ChallengeTTL),
		soaTTL:       seconds(cfg.SOA.TTL),
		negTTL:       seconds(min(cfg.SOA.TTL, cfg.SOA.Minimum)),
	}
	h.scratch.New = func() any {
		return &scratch{
			req:    make([]byte, 4096),
			resp:   make([]byte, 0, 4096),
			name:   make([]byte, 0, maxNameWire),
			cookie: make([]byte, 0, clientCookieLen+serverCookieLen),
		}
	}
	h.SetClusters(src.Clusters())
	h.z.Store(h.prepareZone(cfg.NameServers, cfg.Apex, cfg.SOA.Serial))
	return h, nil
}

// SetClusters prepares the answers for the repls of clusters, the
// Source's clusters after a reload changed them (their addresses, say):
// every query that follows answers with them.
func (h *Handler) SetClusters(clusters []cluster.Cluster) {
	targets := make(map[string]*target, len(clusters))
	for _, c := range clusters {
		t := h.makeTarget(c)
		targets[c.Name] = &t
	}
	h.targets.Store(&targets)
}

// target returns the answers for the repls of the named cluster. One the
// Source has and SetClusters was not told of yet (a reload in progress)
// is made from the Source's clusters; nil for a cluster neither has.
func (h *Handler) target(name string) *target {
	if t := (*h.targets.Load())[name]; t != nil {
		return t
	}
	for _, c := range h.src.Clusters() {
		if c.Name == name {
			t := h.makeTarget(c)
			return &t
		}
	}
	return nil
}

// Serial returns the SOA serial answered now.
func (h *Handler) Serial() uint32 { return h.z.Load().serial }

// CheckStatic reports what SetStatic would refuse.
func (h *Handler) CheckStatic(nss []NameServer, apex Apex) error {
	_, _, err := h.checkStatic(nss, apex)
	return err
}

func (h *Handler) checkStatic(nss []NameServer, apex Apex) ([]NameServer, Apex, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	apex = Apex{A: slices.Clone(apex.A), AAAA: slices.Clone(apex.AAAA), TXT: slices.Clone(apex.TXT),
		MX: slices.Clone(apex.MX), CAA: slices.Clone(apex.CAA)} // checkApex normalises in place
	nss = checkNameServers(nss, h.zone.Name(), bad)
	apex = checkApex(apex, bad)
	return nss, apex, errors.Join(errs...)
}

// SetStatic replaces the zone's NS records (with their glue) and its
// static apex records, at once for every query that follows, and returns
// the SOA serial answered from then on: the one before plus one when the
// records changed (serial arithmetic, RFC 1982), else the same. It
// refuses, changing nothing, what the Config's checks refuse.
func (h *Handler) SetStatic(nss []NameServer, apex Apex) (serial uint32, changed bool, err error) {
	nss, apex, err = h.checkStatic(nss, apex)
	if err != nil {
		return 0, false, err
	}
	h.zoneMu.Lock()
	defer h.zoneMu.Unlock()
	old := h.z.Load()
	if staticKey(nss, apex) == old.key {
		return old.serial, false, nil
	}
	next := h.prepareZone(nss, apex, old.serial+1)
	h.z.Store(next)
	return next.serial, true, nil
}

// staticKey is what tells that the static records changed.
func staticKey(nss []NameServer, apex Apex) string { return fmt.Sprintf("%v|%v", nss, apex) }

func seconds(d time.Duration) uint32 { return uint32(d / time.Second) }

// makeTarget prepares the answers for the repls of cluster c.
func (h *Handler) makeTarget(c cluster.Cluster) target {
	t := target{name: c.Name}
	for _, ip := range c.ProxyIPv4 {
		a := ip.As4()
		t.a = h.appendAddrRR(t.a, typeA, a[:])
		t.nA++
	}
	for _, ip := range c.ProxyIPv6 {
		a := ip.As16()
		t.aaaa = h.appendAddrRR(t.aaaa, typeAAAA, a[:])
		t.nAAAA++
	}
	return t
}

// appendAddrRR appends an A or AAAA record owned by the question's name.
func (h *Handler) appendAddrRR(dst []byte, typ uint16, addr []byte) []byte {
	dst = append(dst, 0xC0, headerLen)
	dst = binary.BigEndian.AppendUint16(dst, typ)
	dst = binary.BigEndian.AppendUint16(dst, classIN)
	dst = binary.BigEndian.AppendUint32(dst, h.ttl)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(addr)))
	return append(dst, addr...)
}

// relName prepares a lower-case name for writing: compressed against the
// zone when under it.
func (h *Handler) relName(name string) wireName {
	zone := h.zone.Name()
	switch {
	case name == zone:
		return wireName{inZone: true}
	case len(name) > len(zone) && name[len(name)-len(zone)-1:] == "."+zone:
		w := appendWireName(nil, name[:len(name)-len(zone)-1])
		return wireName{rel: w[:len(w)-1], inZone: true}
	}
	return wireName{full: appendWireName(nil, name)}
}

// prepareZone prepares the SOA, NS, glue and static apex records from
// checked name servers and apex records.
func (h *Handler) prepareZone(nss []NameServer, apexRecords Apex, serial uint32) *zoneRecords {
	c := &h.cfg
	z := &zoneRecords{hosts: make(map[string]*staticSet), serial: serial, key: staticKey(nss, apexRecords)}
	z.mname = h.relName(nss[0].Name)
	z.rname = h.relName(c.SOA.Mbox)
	for _, v := range []time.Duration{0, c.SOA.Refresh, c.SOA.Retry, c.SOA.Expire, c.SOA.Minimum} {
		if v == 0 {
			z.soaRR = binary.BigEndian.AppendUint32(z.soaRR, serial)
		} else {
			z.soaRR = binary.BigEndian.AppendUint32(z.soaRR, seconds(v))
		}
	}

	for _, ns := range nss {
		w := h.relName(ns.Name)
		z.ns = append(z.ns, w)
		if len(ns.Addrs) == 0 {
			continue
		}
		set := &staticSet{name: w, records: make(map[uint16][][]byte)}
		for _, ip := range ns.Addrs {
			if ip.Is4() {
				a := ip.As4()
				set.records[typeA] = append(set.records[typeA], a[:])
			} else {
				a := ip.As16()
				set.records[typeAAAA] = append(set.records[typeAAAA], a[:])
			}
		}
		z.hosts[ns.Name] = set
		z.glue = append(z.glue, set)
	}

	apex := &z.apex
	apex.name = wireName{inZone: true}
	apex.records = make(map[uint16][][]byte)
	add := func(t uint16, rdata []byte) { apex.records[t] = append(apex.records[t], rdata) }
	for _, ip := range apexRecords.A {
		a := ip.As4()
		add(typeA, a[:])
	}
	for _, ip := range apexRecords.AAAA {
		a := ip.As16()
		add(typeAAAA, a[:])
	}
	for _, txt := range apexRecords.TXT {
		var rd []byte
		for _, s := range txt {
			rd = append(append(rd, byte(len(s))), s...)
		}
		add(typeTXT, rd)
	}
	for _, mx := range apexRecords.MX {
		rd := binary.BigEndian.AppendUint16(nil, mx.Preference)
		add(typeMX, appendWireName(rd, mx.Exchange))
	}
	for _, caa := range apexRecords.CAA {
		rd := append([]byte{caa.Flag, byte(len(caa.Tag))}, caa.Tag...)
		add(typeCAA, append(rd, caa.Value...))
	}
	return z
}

// ServeDNS implements dns.Handler, for a miekg/dns server. Server answers
// without it, straight from the packets and the TCP stream.
func (h *Handler) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	sc := h.scratch.Get().(*scratch)
	defer h.scratch.Put(sc)
	req, err := r.PackBuffer(sc.req[:cap(sc.req)])
	if err != nil {
		// A message miekg/dns unpacked but cannot pack again.
		m := new(dns.Msg)
		m.SetRcodeFormatError(r)
		_ = w.WriteMsg(m)
		return
	}
	if cap(req) > cap(sc.req) {
		sc.req = req
	}
	client := addrOf(w.RemoteAddr())
	_, tcp := w.LocalAddr().(*net.TCPAddr)
	if out := h.respond(context.Background(), sc, req, client, tcp); out != nil {
		_, _ = w.Write(out)
	}
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// respond answers the query in msg from client, into sc.resp. It returns
// the reply, or nil when none is to be sent.
func (h *Handler) respond(ctx context.Context, sc *scratch, msg []byte, client netip.Addr, tcp bool) []byte {
	now := h.now()
	q := &sc.q
	if err := parseQuery(msg, q); err != nil {
		h.metrics.observe(0, -1, 0)
		return nil
	}

	var cookie []byte
	validCookie := false
	if q.cookie != nil {
		var reuse bool
		validCookie, reuse = h.cookies.check(q.cookie, client, now)
		if reuse {
			cookie = append(sc.cookie[:0], q.cookie...)
		} else {
			cookie = h.cookies.appendCookie(sc.cookie[:0], q.cookie, client, now)
		}
	}

	b := builder{buf: sc.resp[:0], z: h.z.Load()}
	b.header(q)
	if !tcp && h.rrl != nil && !validCookie {
		if a := h.rrl.take(client, now.UnixNano()); a != rrlAllow {
			return h.limited(sc, &b, a, cookie, now)
		}
	}

	rcode, flags := h.reply(ctx, &b, q, sc, cookie)
	tsigLen := 0
	if q.tsig && rcode == rcodeNotAuth {
		tsigLen = q.tsigLen
	}
	if limit := h.sizeLimit(q, tcp); len(b.buf)+optLen(q, cookie)+tsigLen > limit {
		// Too big: nothing but the question and the OPT record, and TC;
		// and the TSIG if it fits (else the retry over TCP gets it).
		b.truncate(q)
		flags |= flagTC
		if len(b.buf)+optLen(q, cookie)+tsigLen > limit {
			tsigLen = 0
		}
	}
	if q.edns {
		b.opt(uint16(h.cfg.MaxUDPSize), rcode, q.do, cookie)
	}
	if tsigLen > 0 {
		b.tsigError(q, tsigBadKey) // after the OPT: a TSIG is the last record
	}
	b.flags(q, flags, rcode)
	out := b.finish()
	sc.resp = out

	d := h.now().Sub(now)
	h.metrics.observe(q.qtype, rcode, d)
	h.logQuery(sc, client, tcp, rcode, len(out), flags&flagTC != 0, d)
	return out
}

// limited handles a UDP query over the rate limit: no reply (drop), or an
// empty truncated one (slip) so that a real client retries over TCP.
func (h *Handler) limited(sc *scratch, b *builder, a rrlAction, cookie []byte, start time.Time) []byte {
	q := &sc.q
	h.metrics.rateLimited(a)
	if a == rrlDrop {
		h.metrics.observe(q.qtype, -1, h.now().Sub(start))
		return nil
	}
	if q.qname != nil {
		b.question(q)
	}
	if q.edns {
		b.opt(uint16(h.cfg.MaxUDPSize), 0, q.do, cookie)
	}
	b.flags(q, flagTC, rcodeSuccess)
	out := b.finish()
	sc.resp = out
	h.metrics.observe(q.qtype, rcodeSuccess, h.now().Sub(start))
	return out
}

// reply writes the question and the answer into b, or the error reply a
// malformed or unsupported query gets, and returns its rcode and flags.
func (h *Handler) reply(ctx context.Context, b *builder, q *query, sc *scratch, cookie []byte) (rcode int, flags uint16) {
	switch {
	case q.rcode != 0:
		rcode = q.rcode
	case q.tsig:
		// Signed with a key this server does not have, as it has none:
		// NOTAUTH, with an unsigned TSIG saying BADKEY (RFC 8945, 5.2.1),
		// before anything else is looked at.
		rcode = rcodeNotAuth
	case q.opcode != 0:
		rcode = rcodeNotImp
	case q.edns && q.ednsVersion != 0:
		rcode = rcodeBadVers // RFC 6891, 6.1.3
	case q.qname == nil:
		// No question: only a cookie exchange is valid (RFC 7873, 5.4).
		if cookie == nil {
			rcode = rcodeFormErr
		}
		return rcode, 0
	default:
		b.question(q)
		return h.answer(ctx, b, q, sc)
	}
	if q.qname != nil {
		b.question(q)
	}
	return rcode, 0
}

// sizeLimit is the largest reply q may get: 65535 octets over TCP; over
// UDP 512, or what its EDNS advertises up to MaxUDPSize.
func (h *Handler) sizeLimit(q *query, tcp bool) int {
	switch {
	case tcp:
		return 65535
	case q.edns:
		return min(max(int(q.udpSize), minUDPSize), h.cfg.MaxUDPSize)
	}
	return minUDPSize
}

// optLen is the size of the OPT record a reply to q carries.
func optLen(q *query, cookie []byte) int {
	if !q.edns {
		return 0
	}
	n := 11
	if cookie != nil {
		n += 4 + len(cookie)
	}
	return n
}

// logQuery writes one line of the query log for one query in
// QueryLogEvery.
func (h *Handler) logQuery(sc *scratch, client netip.Addr, tcp bool, rcode, size int, truncated bool, d time.Duration) {
	every := uint64(h.cfg.QueryLogEvery)
	if every == 0 || h.queryN.Add(1)%every != 0 {
		return
	}
	if ce := h.qlog.Check(zap.InfoLevel, "query"); ce != nil {
		ce.Write(
			zap.Stringer("client", client),
			zap.Bool("tcp", tcp),
			zap.String("qname", string(sc.name)),
			zap.Uint16("qtype", sc.q.qtype),
			zap.Int("rcode", rcode),
			zap.Int("size", size),
			zap.Bool("truncated", truncated),
			zap.Duration("duration", d),
		)
	}
}

// logFailure logs a lookup failure (a SERVFAIL) at most once a second.
func (h *Handler) logFailure(name string, err error) {
	ok, held := h.failLogs.Allow(time.Now())
	if !ok {
		return
	}
	h.logger.Warn("lookup failed; answering SERVFAIL (logged at most once a second)",
		zap.String("name", name), zap.Error(err), zap.Int64("suppressed", held))
}
