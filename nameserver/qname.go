package nameserver

// qnameInfo places a question name relative to the zone.
type qnameInfo struct {
	inZone bool
	apex   bool
	// zoneOff is where the zone's name starts within the question name
	// (so the reply can point to it).
	zoneOff int
	// plain: every label is only letters, digits, '-' and '_', so the name
	// can be what ParseName is given; lower then holds it, lower-case, in
	// presentation form without the final dot.
	plain bool
	lower []byte
}

// inspect places qname (wire form, uncompressed, checked by questionName)
// relative to the zone, whose lower-case wire form is zoneWire, and writes
// its lower-case presentation form into scratch.
func inspect(qname, zoneWire, scratch []byte) qnameInfo {
	info := qnameInfo{plain: true, zoneOff: -1}
	lower := scratch[:0]
	for off := 0; off < len(qname); {
		if info.zoneOff < 0 && len(qname)-off == len(zoneWire) && equalFold(qname[off:], zoneWire) {
			info.zoneOff = off
		}
		n := int(qname[off])
		if n == 0 {
			break
		}
		if len(lower) > 0 {
			lower = append(lower, '.')
		}
		for _, c := range qname[off+1 : off+1+n] {
			switch {
			case 'A' <= c && c <= 'Z':
				c += 'a' - 'A'
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
			default:
				info.plain = false
			}
			lower = append(lower, c)
		}
		off += 1 + n
	}
	info.inZone = info.zoneOff >= 0
	info.apex = info.zoneOff == 0
	info.lower = lower
	return info
}

// equalFold compares two wire-form names (or tails of names) ignoring
// ASCII case. Label length octets are below 64, so folding them is a no-op.
func equalFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
