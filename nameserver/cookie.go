package nameserver

import (
	"crypto/subtle"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/dchest/siphash"
)

// Server cookies (RFC 7873) in the interoperable format of RFC 9018:
//
//	version (1) = 1 | reserved (3) = 0 | timestamp (4, seconds) | hash (8)
//
// where hash = SipHash-2-4(client cookie | version | reserved | timestamp |
// client IP), keyed with the server secret. Servers sharing a secret verify
// each other's cookies.
const (
	clientCookieLen = 8
	serverCookieLen = 16
	cookieVersion   = 1

	// A server cookie is accepted for an hour after it was made, and up to
	// five minutes "from the future" for clocks that disagree (RFC 9018,
	// section 4.3).
	cookieMaxAge  = 3600
	cookieMaxSkew = 300
	// A valid server cookie younger than this is sent back as it came:
	// RFC 9018, section 4.3, asks for a new one at least when the one
	// received is more than half an hour old. It saves a SipHash per
	// query from a client that echoes its cookie.
	cookieReissueAge = 1800
)

type cookieKey struct{ k0, k1 uint64 }

func newCookieKey(secret []byte) cookieKey {
	return cookieKey{binary.LittleEndian.Uint64(secret), binary.LittleEndian.Uint64(secret[8:])}
}

// hash computes the 8-octet hash of a server cookie.
func (k cookieKey) hash(client []byte, stamp uint32, ip netip.Addr) uint64 {
	var in [clientCookieLen + 8 + 16]byte
	n := copy(in[:], client[:clientCookieLen])
	in[n] = cookieVersion
	binary.BigEndian.PutUint32(in[n+4:], stamp)
	n += 8
	if ip.Is4() {
		a := ip.As4()
		n += copy(in[n:], a[:])
	} else {
		a := ip.As16()
		n += copy(in[n:], a[:])
	}
	return siphash.Hash(k.k0, k.k1, in[:n])
}

// appendCookie appends the COOKIE option data of a reply: the client's
// cookie and a fresh server cookie for ip.
func (k cookieKey) appendCookie(dst, client []byte, ip netip.Addr, now time.Time) []byte {
	stamp := uint32(now.Unix())
	dst = append(dst, client[:clientCookieLen]...)
	dst = append(dst, cookieVersion, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, stamp)
	return binary.LittleEndian.AppendUint64(dst, k.hash(client, stamp, ip))
}

// check reports whether the COOKIE option data of a query holds a server
// cookie this server (or one sharing its secret) made for ip, recently;
// and whether it is young enough to be sent back as it is (made less than
// cookieReissueAge ago, and not in the future).
func (k cookieKey) check(cookie []byte, ip netip.Addr, now time.Time) (valid, reuse bool) {
	if len(cookie) != clientCookieLen+serverCookieLen {
		return false, false
	}
	server := cookie[clientCookieLen:]
	if server[0] != cookieVersion {
		return false, false
	}
	stamp := binary.BigEndian.Uint32(server[4:])
	// Serial number arithmetic (RFC 1982): the age may be negative.
	age := int32(uint32(now.Unix()) - stamp)
	if age > cookieMaxAge || age < -cookieMaxSkew {
		return false, false
	}
	var want [8]byte
	binary.LittleEndian.PutUint64(want[:], k.hash(cookie, stamp, ip))
	if subtle.ConstantTimeCompare(want[:], server[8:]) != 1 {
		return false, false
	}
	return true, age >= 0 && age < cookieReissueAge
}
