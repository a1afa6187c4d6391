// Package dsn reads store addresses: it tells a PostgreSQL DSN from the
// path of an embedded store file, masks passwords for messages, and checks
// the syntax of postgres:// URLs without side effects. Both the PostgreSQL
// backend and the cluster registry use it.
package dsn

import (
	"fmt"
	"strconv"
	"strings"
)

// IsPostgres reports whether a store address names a PostgreSQL server
// (postgres:// or postgresql://) rather than an embedded store file. The
// scheme is matched in lower case only, as pgx does.
func IsPostgres(addr string) bool {
	return strings.HasPrefix(addr, "postgres://") || strings.HasPrefix(addr, "postgresql://")
}

// Redact returns the DSN with any password replaced by "xxxxx" (for
// messages and logs): the password of a URL's user info and the values of
// password and sslpassword parameters, in URL (scheme://...) and in
// key=value form. Strings without either, such as file paths, come back
// unchanged. Malformed input is masked on a best-effort basis, erring
// toward masking too much.
func Redact(dsn string) string {
	if scheme, _, ok := strings.Cut(dsn, "://"); ok && IsScheme(scheme) {
		return redactURL(dsn, len(scheme)+len("://"))
	}
	return redactKeywords(dsn)
}

const mask = "xxxxx"

// redactURL masks the passwords of a URL whose authority starts at
// dsn[start:].
func redactURL(dsn string, start int) string {
	var b strings.Builder
	b.WriteString(dsn[:start])
	rest := dsn[start:]
	// User info: a password starts at the first ':' before the first '@'
	// and runs to the last '@', so that an unescaped '@', '/' or '?' in it
	// is still masked; an '@' in a parameter masks too much, never too
	// little.
	if first := strings.IndexByte(rest, '@'); first >= 0 {
		at := strings.LastIndexByte(rest, '@')
		if colon := strings.IndexByte(rest[:first], ':'); colon >= 0 && colon+1 < at {
			b.WriteString(rest[:colon+1])
			b.WriteString(mask)
			rest = rest[at:]
		}
	}
	authority, query, hasQuery := strings.Cut(rest, "?")
	b.WriteString(authority)
	if !hasQuery {
		return b.String()
	}
	b.WriteByte('?')
	secret := false // within a password value that holds an unescaped '&'
	for i, pair := range strings.Split(query, "&") {
		if i > 0 {
			b.WriteByte('&')
		}
		key, _, ok := strings.Cut(pair, "=")
		switch {
		case ok && isSecretKey(unescapeLenient(key)):
			b.WriteString(key)
			b.WriteByte('=')
			b.WriteString(mask)
			secret = true
		case !ok && secret:
			b.WriteString(mask)
		default:
			b.WriteString(pair)
			secret = false
		}
	}
	return b.String()
}

// redactKeywords masks the password values of a libpq key=value string.
func redactKeywords(s string) string {
	var b strings.Builder
	for {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			b.WriteString(s)
			return b.String()
		}
		fields := strings.Fields(s[:eq])
		key := ""
		if len(fields) > 0 {
			key = fields[len(fields)-1]
		}
		b.WriteString(s[:eq+1])
		s = s[eq+1:]
		sp := len(s) - len(strings.TrimLeft(s, " \t\n\r\v\f"))
		b.WriteString(s[:sp])
		s = s[sp:]
		n := keywordValueLen(s)
		if isSecretKey(key) {
			b.WriteString(mask)
		} else {
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
}

// keywordValueLen returns the length of the key=value value that starts s:
// a quoted string with backslash escapes (to the end of s when it is not
// closed), or a run of non-space bytes.
func keywordValueLen(s string) int {
	quoted := strings.HasPrefix(s, "'")
	i := 0
	if quoted {
		i = 1
	}
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			i++
		case quoted && c == '\'':
			return i + 1
		case !quoted && strings.IndexByte(" \t\n\r\v\f", c) >= 0:
			return i
		}
	}
	return len(s)
}

func isSecretKey(key string) bool {
	key = strings.ToLower(strings.TrimSpace(key))
	return key == "password" || key == "sslpassword"
}

// unescapeLenient decodes the valid percent-escapes of s and keeps the rest.
func unescapeLenient(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// IsScheme reports whether s is a URL scheme (RFC 3986).
func IsScheme(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// LooksLikeKeywords reports whether s starts like a libpq key=value
// string ("host=db dbname=x").
func LooksLikeKeywords(s string) bool {
	key, _, ok := strings.Cut(s, "=")
	if !ok || key == "" {
		return false
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; !('a' <= c && c <= 'z' || c == '_') {
			return false
		}
	}
	return true
}

// CheckURL checks the syntax of a postgres:// URL the way libpq and
// pgx parse it, without reading the environment or any file (pgconn's
// ParseConfig does both: it is left to the binary that opens the store).
// It returns what is wrong, never quoting a password, or "".
func CheckURL(dsn string) string {
	p, ok := strings.CutPrefix(dsn, "postgresql://")
	if !ok {
		p, _ = strings.CutPrefix(dsn, "postgres://")
	}
	// User info: up to an '@' met before any '/'.
	if i := strings.IndexAny(p, "@/"); i >= 0 && p[i] == '@' {
		user, password, _ := strings.Cut(p[:i], ":")
		if msg := checkComponent(user); msg != "" {
			return "the user name " + msg
		}
		if msg := checkComponent(password); msg != "" {
			return "the password " + msg
		}
		p = p[i+1:]
	}
	// Hosts: host[:port] separated by ','.
	for {
		if strings.HasPrefix(p, "[") {
			end := strings.IndexByte(p, ']')
			switch {
			case end < 0:
				return `an IPv6 host opened with "[" has no "]"`
			case end == 1:
				return `the IPv6 host "[]" is empty`
			}
			p = p[end+1:]
			if p != "" && strings.IndexByte(":/?,", p[0]) < 0 {
				return fmt.Sprintf(`%q after an IPv6 host; expected ":port", "/" or "?"`, p[:1])
			}
		} else {
			i := strings.IndexAny(p, ":/?,")
			if i < 0 {
				i = len(p)
			}
			if msg := checkComponent(p[:i]); msg != "" {
				return fmt.Sprintf("the host %q %s", p[:i], msg)
			}
			p = p[i:]
		}
		if rest, ok := strings.CutPrefix(p, ":"); ok {
			i := strings.IndexAny(rest, "/?,")
			if i < 0 {
				i = len(rest)
			}
			port := strings.Trim(rest[:i], " ")
			if n, err := strconv.ParseUint(port, 10, 16); port != "" && (err != nil || n == 0) {
				return fmt.Sprintf("the port %q is not a number from 1 to 65535", port)
			}
			p = rest[i:]
		}
		rest, ok := strings.CutPrefix(p, ",")
		if !ok {
			break
		}
		p = rest
	}
	// Database name.
	if rest, ok := strings.CutPrefix(p, "/"); ok {
		db, query, hasQuery := strings.Cut(rest, "?")
		if msg := checkComponent(db); msg != "" {
			return fmt.Sprintf("the database name %q %s", db, msg)
		}
		p = ""
		if hasQuery {
			p = "?" + query
		}
	}
	// Parameters.
	if rest, ok := strings.CutPrefix(p, "?"); ok {
		secret := false // after a password parameter
		for pair := range strings.SplitSeq(rest, "&") {
			key, value, ok := strings.Cut(pair, "=")
			switch {
			case !ok && secret:
				return `a password parameter holds "&"; percent-encode it as %26`
			case !ok:
				return fmt.Sprintf(`the parameter %q has no "="; write key=value`, key)
			}
			secret = isSecretKey(unescapeLenient(key))
			if strings.Contains(value, "=") {
				return fmt.Sprintf(`the value of %q holds "="; percent-encode it as %%3D`, key)
			}
			if msg := checkComponent(key); msg != "" {
				return fmt.Sprintf("the parameter name %q %s", key, msg)
			}
			if msg := checkComponent(value); msg != "" {
				if secret {
					return fmt.Sprintf("the value of %q %s", key, msg)
				}
				return fmt.Sprintf("the value %q of %q %s", value, key, msg)
			}
		}
	}
	return ""
}

// checkComponent checks a percent-encoded URL component as libpq
// decodes it: escapes of two hex digits, no %00, no space inside. It
// returns what is wrong (to follow the component's name) or "".
func checkComponent(s string) string {
	s = strings.Trim(s, " ")
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ' ':
			return "holds a space; percent-encode it as %20"
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return "holds a '%' that starts no %XX escape; percent-encode it as %25"
			}
			if s[i+1] == '0' && s[i+2] == '0' {
				return "holds %00, which is not allowed"
			}
			i += 2
		}
	}
	return ""
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
