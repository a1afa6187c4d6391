package nameserver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/replproxy/replproxy/store"
)

// answer writes the answer, authority and additional records for a
// well-formed query whose question is already written, and returns the
// rcode and header flags (AA) of the reply.
func (h *Handler) answer(ctx context.Context, b *builder, q *query, sc *scratch) (int, uint16) {
	if q.qclass != classIN {
		return rcodeRefused, 0 // CHAOS "version.bind" and the like included
	}
	info := inspect(q.qname, h.zoneWire, sc.name[:0])
	sc.name = info.lower
	switch {
	case !info.inZone:
		return rcodeRefused, 0 // not ours, and never recursion
	case q.qtype == typeAXFR || q.qtype == typeIXFR:
		return rcodeRefused, 0 // no zone transfers
	case q.qtype == typeOPT:
		return rcodeFormErr, 0 // a pseudo-type cannot be asked for
	}
	b.zoneOff = headerLen + info.zoneOff

	if info.apex {
		h.static(b, q, &b.z.apex)
		return rcodeSuccess, flagAA
	}
	if !info.plain {
		// Bytes no name of ours holds (escaped dots, spaces, UTF-8...).
		return h.nxdomain(b)
	}
	if set := b.z.hosts[string(info.lower)]; set != nil {
		h.static(b, q, set)
		return rcodeSuccess, flagAA
	}

	name := string(info.lower)
	k, err := h.zone.ParseName(name)
	if err != nil {
		return h.nxdomain(b) // too deep, or a label no name of ours has
	}
	switch k.Kind {
	case store.KeyIDRoot:
		return h.nodata(b)
	case store.KeyOwner:
		if h.src.HasOwner(k.Owner) {
			return h.nodata(b) // an empty non-terminal (RFC 8020)
		}
		return h.nxdomain(b)
	case store.KeyRepl, store.KeyReplID:
		host, err := h.src.Host(ctx, k)
		if err != nil {
			return h.failed(b, name, err)
		}
		t := h.target(host)
		if t == nil {
			return h.failed(b, name, fmt.Errorf("cluster %s: %w: not in the registry", host, store.ErrUnavailable))
		}
		return h.repl(b, q, t)
	case store.KeyChallenge:
		return h.challenge(ctx, b, q, sc, name)
	}
	return h.nxdomain(b)
}

// failed answers a lookup error: NXDOMAIN when the name does not exist,
// SERVFAIL when that cannot be told.
func (h *Handler) failed(b *builder, name string, err error) (int, uint16) {
	if errors.Is(err, store.ErrNotFound) {
		return h.nxdomain(b)
	}
	h.logFailure(name, err)
	return rcodeServFail, 0
}

// nxdomain: the name does not exist; the SOA goes in authority.
func (h *Handler) nxdomain(b *builder) (int, uint16) {
	h.soa(b, h.negTTL)
	b.ns++
	return rcodeNXDomain, flagAA
}

// nodata: the name exists without records of the type asked.
func (h *Handler) nodata(b *builder) (int, uint16) {
	h.soa(b, h.negTTL)
	b.ns++
	return rcodeSuccess, flagAA
}

// repl answers for a name of a repl hosted by t.
func (h *Handler) repl(b *builder, q *query, t *target) (int, uint16) {
	switch q.qtype {
	case typeA:
		if t.nA > 0 {
			b.buf = append(b.buf, t.a...)
			b.an += t.nA
			return rcodeSuccess, flagAA
		}
	case typeAAAA:
		if t.nAAAA > 0 {
			b.buf = append(b.buf, t.aaaa...)
			b.an += t.nAAAA
			return rcodeSuccess, flagAA
		}
	case typeANY:
		h.hinfo(b)
		return rcodeSuccess, flagAA
	}
	return h.nodata(b)
}

// static answers for the apex or an in-zone name server.
func (h *Handler) static(b *builder, q *query, set *staticSet) {
	z := b.z
	apex := set == &z.apex
	switch {
	case q.qtype == typeANY:
		h.hinfo(b)
		return
	case apex && q.qtype == typeSOA:
		h.soa(b, h.soaTTL)
		b.an++
		return
	case apex && q.qtype == typeNS:
		for i := range z.ns {
			b.pointer(b.zoneOff)
			at := b.rrHeader(typeNS, h.soaTTL)
			b.name(&z.ns[i])
			b.endRR(at)
			b.an++
		}
		for _, g := range z.glue {
			h.records(b, g, typeA, true)
			h.records(b, g, typeAAAA, true)
		}
		return
	}
	if h.records(b, set, q.qtype, false) == 0 {
		h.soa(b, h.negTTL)
		b.ns++
	}
}

// records writes set's records of type t (in the answer section, owned by
// the question's name, or as additional records) and returns how many.
func (h *Handler) records(b *builder, set *staticSet, t uint16, additional bool) int {
	rds := set.records[t]
	for _, rd := range rds {
		if additional {
			b.name(&set.name)
		} else {
			b.pointer(headerLen)
		}
		b.u16(t)
		b.u16(classIN)
		b.u32(h.soaTTL)
		b.u16(uint16(len(rd)))
		b.buf = append(b.buf, rd...)
	}
	if additional {
		b.ar += uint16(len(rds))
	} else {
		b.an += uint16(len(rds))
	}
	return len(rds)
}

// soa writes the zone's SOA record with the given TTL; the caller counts
// it in its section.
func (h *Handler) soa(b *builder, ttl uint32) {
	b.pointer(b.zoneOff)
	at := b.rrHeader(typeSOA, ttl)
	b.name(&b.z.mname)
	b.name(&b.z.rname)
	b.buf = append(b.buf, b.z.soaRR...)
	b.endRR(at)
}

// hinfo is the answer to ANY at a name that exists (RFC 8482, 4.2).
func (h *Handler) hinfo(b *builder) {
	b.pointer(headerLen)
	at := b.rrHeader(typeHINFO, h.ttl)
	b.buf = append(b.buf, 7, 'R', 'F', 'C', '8', '4', '8', '2', 0)
	b.endRR(at)
	b.an++
}

// challenge answers for _acme-challenge.<base>: TXT records from the
// stores, or a CNAME into the validation zone. Only names whose base
// exists are looked up, so random challenge names cost no store query.
func (h *Handler) challenge(ctx context.Context, b *builder, q *query, sc *scratch, name string) (int, uint16) {
	base := name[len(store.ChallengePrefix):]
	exists, err := h.exists(ctx, b.z, base)
	switch {
	case err != nil:
		return h.failed(b, name, err)
	case !exists:
		return h.nxdomain(b)
	}

	if h.cfg.ValidationZone != "" {
		// _acme-challenge.alice.<zone> -> _acme-challenge.alice.<validation zone>
		target := name[:len(name)-len(h.zone.Name())] + h.cfg.ValidationZone
		if len(target) > 253 {
			return h.nxdomain(b) // cannot be delegated; nothing can be there
		}
		b.pointer(headerLen)
		at := b.rrHeader(typeCNAME, h.challengeTTL)
		b.buf = appendWireName(b.buf, target)
		b.endRR(at)
		b.an++
		return rcodeSuccess, flagAA
	}

	values, err := h.src.Challenges(ctx, name, sc.txt[:0])
	sc.txt = values[:0]
	switch {
	case err != nil:
		return h.failed(b, name, err)
	case len(values) == 0:
		return h.nxdomain(b)
	case q.qtype != typeTXT && q.qtype != typeANY:
		return h.nodata(b)
	}
	for _, v := range values {
		b.pointer(headerLen)
		at := b.rrHeader(typeTXT, h.challengeTTL)
		b.buf = append(b.buf, byte(len(v)))
		b.buf = append(b.buf, v...)
		b.endRR(at)
		b.an++
	}
	return rcodeSuccess, flagAA
}

// exists reports whether base, a normalised name under the zone, exists.
func (h *Handler) exists(ctx context.Context, z *zoneRecords, base string) (bool, error) {
	if base == h.zone.Name() || z.hosts[base] != nil {
		return true, nil
	}
	if !strings.HasSuffix(base, "."+h.zone.Name()) {
		return false, nil
	}
	k, err := h.zone.ParseName(base)
	if err != nil {
		return false, nil
	}
	switch k.Kind {
	case store.KeyIDRoot:
		return true, nil
	case store.KeyOwner:
		return h.src.HasOwner(k.Owner), nil
	case store.KeyRepl, store.KeyReplID:
		_, err := h.src.Host(ctx, k)
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	}
	return false, nil
}
