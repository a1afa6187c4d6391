package nameserver

import (
	"encoding/binary"
	"errors"
)

// The wire format is read and written here directly rather than through
// dns.Msg: a query is parsed without allocating (every field is a slice of
// the request or a number) and a reply is written into a reused buffer,
// which is what keeps a cache-hit query at one allocation.

// Header flag bits (RFC 1035, section 4.1.1; RFC 4035 for AD and CD).
const (
	flagQR = 1 << 15
	flagAA = 1 << 10
	flagTC = 1 << 9
	flagRD = 1 << 8
	flagCD = 1 << 4

	headerLen = 12
)

// Record types and classes this package reads or writes.
const (
	typeA     uint16 = 1
	typeNS    uint16 = 2
	typeCNAME uint16 = 5
	typeSOA   uint16 = 6
	typeHINFO uint16 = 13
	typeMX    uint16 = 15
	typeTXT   uint16 = 16
	typeAAAA  uint16 = 28
	typeOPT   uint16 = 41
	typeTSIG  uint16 = 250
	typeIXFR  uint16 = 251
	typeAXFR  uint16 = 252
	typeANY   uint16 = 255
	typeCAA   uint16 = 257

	classIN  uint16 = 1
	classANY uint16 = 255

	optionCookie uint16 = 10
)

// Response codes, extended ones included (RFC 6891).
const (
	rcodeSuccess  = 0
	rcodeFormErr  = 1
	rcodeServFail = 2
	rcodeNXDomain = 3
	rcodeNotImp   = 4
	rcodeRefused  = 5
	rcodeNotAuth  = 9
	rcodeBadVers  = 16

	// The TSIG RR's error for a key (or algorithm) this server does not
	// have (RFC 8945, 5.2.1): all of them, as it has no keys.
	tsigBadKey = 17
)

// Limits of a query this server reads.
const (
	maxNameWire = 255 // octets of a name in wire form (RFC 1035, 3.1)
	maxLabels   = 127
	minUDPSize  = 512 // what a client without EDNS can take
)

// errDrop: the packet gets no reply (too short for a header, or a response).
var errDrop = errors.New("drop")

// query is a parsed request. Slices point into the request buffer.
type query struct {
	id      uint16
	flags   uint16 // the header's second word, as received
	opcode  int
	qdcount int

	// The question, when qdcount is 1 and it parsed.
	qname  []byte // wire form, exactly as asked
	qtype  uint16
	qclass uint16

	// EDNS (RFC 6891).
	edns        bool
	ednsVersion uint8
	udpSize     uint16
	do          bool
	cookie      []byte // the COOKIE option's data: client cookie and any server cookie

	// TSIG (RFC 8945): the last additional record, when it is one. Its
	// names are read from msg at tsigKey (the owner: the key's name) and
	// tsigAlg, following any compression pointers.
	tsig             bool
	msg              []byte // the request
	tsigKey, tsigAlg int
	tsigTime         uint64 // Time Signed, 48 bits
	tsigFudge        uint16
	tsigLen          int // the size of the TSIG RR of an error reply

	rcode int // rcodeFormErr when the message is malformed past the header
}

// parseQuery reads a request. It returns errDrop for a packet that must get
// no reply; a malformed message past the header sets q.rcode to FORMERR and
// keeps what parsed (the header, and the question when it was whole).
func parseQuery(msg []byte, q *query) error {
	*q = query{}
	if len(msg) < headerLen {
		return errDrop
	}
	q.id = binary.BigEndian.Uint16(msg)
	q.flags = binary.BigEndian.Uint16(msg[2:])
	if q.flags&flagQR != 0 {
		return errDrop // never answer an answer
	}
	q.opcode = int(q.flags>>11) & 0xF
	q.qdcount = int(binary.BigEndian.Uint16(msg[4:]))
	ancount := int(binary.BigEndian.Uint16(msg[6:]))
	nscount := int(binary.BigEndian.Uint16(msg[8:]))
	arcount := int(binary.BigEndian.Uint16(msg[10:]))

	off := headerLen
	if q.qdcount > 1 {
		q.rcode = rcodeFormErr
		return nil
	}
	if q.qdcount == 1 {
		end, ok := questionName(msg, off)
		if !ok || end+4 > len(msg) {
			q.rcode = rcodeFormErr
			return nil
		}
		q.qname = msg[off:end]
		q.qtype = binary.BigEndian.Uint16(msg[end:])
		q.qclass = binary.BigEndian.Uint16(msg[end+2:])
		off = end + 4
	}
	if ancount != 0 || nscount != 0 {
		// A query carries no answers or authority (only UPDATE and NOTIFY
		// do, and those are not implemented).
		q.rcode = rcodeFormErr
		return nil
	}
	for i := range arcount {
		var ok bool
		if off, ok = q.additional(msg, off, i == arcount-1); !ok {
			q.rcode = rcodeFormErr
			return nil
		}
	}
	return nil
}

// questionName returns the end of the uncompressed name at off. A question
// is the first name of a message, so a compression pointer there is bogus.
func questionName(msg []byte, off int) (int, bool) {
	start := off
	for labels := 0; ; labels++ {
		if off >= len(msg) || labels > maxLabels {
			return 0, false
		}
		n := int(msg[off])
		if n == 0 {
			off++
			return off, off-start <= maxNameWire
		}
		if n > 63 { // a pointer or a reserved label type
			return 0, false
		}
		off += 1 + n
	}
}

// skipName returns the end of a possibly compressed name at off.
func skipName(msg []byte, off int) (int, bool) {
	for labels := 0; ; labels++ {
		if off >= len(msg) || labels > maxLabels {
			return 0, false
		}
		n := int(msg[off])
		switch {
		case n == 0:
			return off + 1, true
		case n&0xC0 == 0xC0:
			if off+2 > len(msg) {
				return 0, false
			}
			return off + 2, true
		case n > 63:
			return 0, false
		}
		off += 1 + n
	}
}

// additional reads one record of the additional section, the last one if
// last: the OPT record and a TSIG are taken in, anything else is skipped.
func (q *query) additional(msg []byte, off int, last bool) (int, bool) {
	nameStart := off
	off, ok := skipName(msg, off)
	if !ok || off+10 > len(msg) {
		return 0, false
	}
	typ := binary.BigEndian.Uint16(msg[off:])
	class := binary.BigEndian.Uint16(msg[off+2:])
	ttl := binary.BigEndian.Uint32(msg[off+4:])
	rdlen := int(binary.BigEndian.Uint16(msg[off+8:]))
	off += 10
	if off+rdlen > len(msg) {
		return 0, false
	}
	rdata := msg[off : off+rdlen]
	off += rdlen
	if typ == typeTSIG {
		return off, q.readTSIG(msg, nameStart, off-rdlen, off, class, ttl, last)
	}
	if typ != typeOPT {
		return off, true
	}
	if q.edns || off-rdlen-10-nameStart != 1 {
		return 0, false // a second OPT, or one not owned by the root
	}
	q.edns = true
	q.udpSize = class
	q.ednsVersion = uint8(ttl >> 16)
	q.do = ttl&0x8000 != 0
	for len(rdata) > 0 {
		if len(rdata) < 4 {
			return 0, false
		}
		code := binary.BigEndian.Uint16(rdata)
		n := int(binary.BigEndian.Uint16(rdata[2:]))
		if 4+n > len(rdata) {
			return 0, false
		}
		if code == optionCookie {
			// RFC 7873, 5.2.2: an 8-octet client cookie, alone or with a
			// server cookie of 8 to 32 octets; anything else is FORMERR.
			if q.cookie != nil || !(n == 8 || 16 <= n && n <= 40) {
				return 0, false
			}
			q.cookie = rdata[4 : 4+n]
		}
		rdata = rdata[4+n:]
	}
	return off, true
}

// readTSIG takes in the TSIG record whose owner name starts at nameStart
// and whose RDATA is msg[rdStart:rdEnd]. It must be the last record (so
// there is only one), of class ANY with TTL 0, and its RDATA whole (RFC
// 8945, 4.2 and 5.2); otherwise the message is malformed.
func (q *query) readTSIG(msg []byte, nameStart, rdStart, rdEnd int, class uint16, ttl uint32, last bool) bool {
	if !last || class != classANY || ttl != 0 {
		return false
	}
	_, keyLen, ok := expandedName(msg, nameStart)
	if !ok {
		return false
	}
	rd := msg[:rdEnd] // nothing of the RDATA may lie past its end
	off, algLen, ok := expandedName(rd, rdStart)
	if !ok || off+10 > len(rd) {
		return false
	}
	q.tsigTime = uint64(binary.BigEndian.Uint16(rd[off:]))<<32 | uint64(binary.BigEndian.Uint32(rd[off+2:]))
	q.tsigFudge = binary.BigEndian.Uint16(rd[off+6:])
	off += 10 + int(binary.BigEndian.Uint16(rd[off+8:])) // the MAC
	if off+6 > len(rd) {
		return false
	}
	off += 6 + int(binary.BigEndian.Uint16(rd[off+4:])) // original ID, error, other data
	if off != len(rd) {
		return false
	}
	q.tsig, q.msg, q.tsigKey, q.tsigAlg = true, msg, nameStart, rdStart
	// Owner, type, class, TTL, RDLENGTH; algorithm, time, fudge, MAC
	// size (0), original ID, error, other length (0).
	q.tsigLen = keyLen + 10 + algLen + 16
	return true
}

// expandedName follows the possibly compressed name at off: it returns
// where the name ends at off and its length once expanded. Each pointer
// must point past the header and before where the part of the name that
// holds it starts, so that following them ends.
func expandedName(msg []byte, off int) (end, n int, ok bool) {
	end = -1
	for part := off; ; {
		if off >= len(msg) {
			return 0, 0, false
		}
		c := int(msg[off])
		switch {
		case c == 0:
			if end < 0 {
				end = off + 1
			}
			return end, n + 1, n+1 <= maxNameWire
		case c&0xC0 == 0xC0:
			if off+2 > len(msg) {
				return 0, 0, false
			}
			ptr := int(binary.BigEndian.Uint16(msg[off:]) & 0x3FFF)
			if ptr < headerLen || ptr >= part {
				return 0, 0, false
			}
			if end < 0 {
				end = off + 2
			}
			off, part = ptr, ptr
		case c > 63:
			return 0, 0, false
		default:
			if n += 1 + c; n >= maxNameWire {
				return 0, 0, false // no room left for the root
			}
			off += 1 + c
		}
	}
}

// appendExpandedName appends the name at off in msg, checked by
// expandedName, without compression.
func appendExpandedName(dst, msg []byte, off int) []byte {
	for {
		c := int(msg[off])
		switch {
		case c == 0:
			return append(dst, 0)
		case c&0xC0 == 0xC0:
			off = int(binary.BigEndian.Uint16(msg[off:]) & 0x3FFF)
		default:
			dst = append(dst, msg[off:off+1+c]...)
			off += 1 + c
		}
	}
}

// wireName is a name ready to be written: in the zone, its labels above the
// zone followed by a compression pointer to the zone in the question; out
// of it, its whole wire form.
type wireName struct {
	rel    []byte // in-zone: the labels above the zone, without the final 0
	full   []byte // out of the zone: the whole wire form
	inZone bool
}

// builder writes a reply into a buffer.
type builder struct {
	z          *zoneRecords // the zone's records for this reply (loaded once)
	buf        []byte
	zoneOff    int // where the zone's name starts in the reply's question
	an, ns, ar uint16
}

func (b *builder) u16(v uint16) { b.buf = binary.BigEndian.AppendUint16(b.buf, v) }
func (b *builder) u32(v uint32) { b.buf = binary.BigEndian.AppendUint32(b.buf, v) }

// header starts the reply; flags and finish complete it.
func (b *builder) header(q *query) {
	b.buf = b.buf[:0]
	b.u16(q.id)
	b.buf = append(b.buf, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	b.an, b.ns, b.ar = 0, 0, 0
}

// flags writes the header's flags and the low four bits of rcode; RD and
// CD are copied from the query.
func (b *builder) flags(q *query, flags uint16, rcode int) {
	binary.BigEndian.PutUint16(b.buf[2:], flagQR|uint16(q.opcode)<<11|q.flags&(flagRD|flagCD)|flags|uint16(rcode&0xF))
}

// truncate drops every record written, keeping the header and question.
func (b *builder) truncate(q *query) {
	n := headerLen
	if q.qname != nil && binary.BigEndian.Uint16(b.buf[4:]) == 1 {
		n += len(q.qname) + 4
	}
	b.buf = b.buf[:n]
	b.an, b.ns, b.ar = 0, 0, 0
}

// question copies the question as asked, letter case included.
func (b *builder) question(q *query) {
	b.buf = append(b.buf, q.qname...)
	b.u16(q.qtype)
	b.u16(q.qclass)
	binary.BigEndian.PutUint16(b.buf[4:], 1)
}

// pointer writes a compression pointer to off.
func (b *builder) pointer(off int) { b.u16(0xC000 | uint16(off)) }

func (b *builder) name(n *wireName) {
	if !n.inZone {
		b.buf = append(b.buf, n.full...)
		return
	}
	b.buf = append(b.buf, n.rel...)
	b.pointer(b.zoneOff)
}

// rrHeader writes a record's type, class and TTL after its owner name, and
// a zero RDLENGTH; it returns where the RDLENGTH is, for endRR.
func (b *builder) rrHeader(typ uint16, ttl uint32) int {
	b.u16(typ)
	b.u16(classIN)
	b.u32(ttl)
	at := len(b.buf)
	b.u16(0)
	return at
}

// endRR fills in the RDLENGTH of the record started with rrHeader.
func (b *builder) endRR(at int) {
	binary.BigEndian.PutUint16(b.buf[at:], uint16(len(b.buf)-at-2))
}

// opt writes the OPT record: our UDP payload size, the extended rcode, the
// DO bit echoed, and a cookie when there is one.
func (b *builder) opt(size uint16, rcode int, do bool, cookie []byte) {
	b.buf = append(b.buf, 0) // the root
	b.u16(typeOPT)
	b.u16(size)
	ttl := uint32(rcode>>4) << 24
	if do {
		ttl |= 0x8000
	}
	b.u32(ttl)
	if cookie == nil {
		b.u16(0)
	} else {
		b.u16(uint16(4 + len(cookie)))
		b.u16(optionCookie)
		b.u16(uint16(len(cookie)))
		b.buf = append(b.buf, cookie...)
	}
	b.ar++
}

// tsigError writes the TSIG record of an unsigned error reply to q's TSIG
// (RFC 8945, 5.3.2): the request's key and algorithm names, its Time
// Signed and Fudge echoed, no MAC, the request's id as Original ID, the
// error, no other data.
func (b *builder) tsigError(q *query, tsigErr uint16) {
	b.buf = appendExpandedName(b.buf, q.msg, q.tsigKey)
	b.u16(typeTSIG)
	b.u16(classANY)
	b.u32(0)
	at := len(b.buf)
	b.u16(0)
	b.buf = appendExpandedName(b.buf, q.msg, q.tsigAlg)
	b.u16(uint16(q.tsigTime >> 32))
	b.u32(uint32(q.tsigTime))
	b.u16(q.tsigFudge)
	b.u16(0) // MAC size
	b.u16(q.id)
	b.u16(tsigErr)
	b.u16(0) // other length
	b.endRR(at)
	b.ar++
}

// finish writes the section counts.
func (b *builder) finish() []byte {
	binary.BigEndian.PutUint16(b.buf[6:], b.an)
	binary.BigEndian.PutUint16(b.buf[8:], b.ns)
	binary.BigEndian.PutUint16(b.buf[10:], b.ar)
	return b.buf
}

// appendWireName appends the wire form of a presentation-form name of
// plain labels (no escapes), such as "ns1.repl.test"; "" is the root.
func appendWireName(dst []byte, name string) []byte {
	for name != "" {
		label := name
		rest := ""
		for i := 0; i < len(name); i++ {
			if name[i] == '.' {
				label, rest = name[:i], name[i+1:]
				break
			}
		}
		dst = append(dst, byte(len(label)))
		dst = append(dst, label...)
		name = rest
	}
	return append(dst, 0)
}
