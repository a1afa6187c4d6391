package store

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Checks shared by every backend, so that both reject the same writes with
// the same words before anything is written.

// CheckRepl checks a repl's id, owner, slug, endpoints and generation. An
// asleep repl may have no endpoints.
func CheckRepl(r Repl) error {
	if err := ValidLabel(r.ID); err != nil {
		return fmt.Errorf("repl id: %w", err)
	}
	if err := ValidOwner(r.Owner); err != nil {
		return fmt.Errorf("repl owner: %w", err)
	}
	if err := ValidLabel(r.Slug); err != nil {
		return fmt.Errorf("repl slug: %w", err)
	}
	if r.Generation < 0 {
		return fmt.Errorf("repl generation %d: %w: must be 1 or more", r.Generation, ErrInvalid)
	}
	if r.Asleep && len(r.Endpoints) == 0 {
		return nil
	}
	return CheckEndpoints(r.Endpoints)
}

// CheckEndpoints checks that there is at least one endpoint and that each
// is host:port with a numeric port from 1 to 65535.
func CheckEndpoints(endpoints []string) error {
	if len(endpoints) == 0 {
		return fmt.Errorf("endpoints: %w: a repl needs at least one host:port", ErrInvalid)
	}
	for _, e := range endpoints {
		host, port, err := net.SplitHostPort(e)
		if err != nil || host == "" || strings.ContainsAny(host, " /") {
			return fmt.Errorf("endpoint %q: %w: want host:port, e.g. 10.0.0.5:8080", e, ErrInvalid)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("endpoint %q: %w: port must be a number from 1 to 65535", e, ErrInvalid)
		}
	}
	return nil
}

// ChallengePrefix starts the name of every DNS-01 challenge record.
const ChallengePrefix = "_acme-challenge."

// CheckChallenge checks a challenge record's name and value.
func CheckChallenge(c Challenge) error {
	rest, ok := strings.CutPrefix(c.Name, ChallengePrefix)
	if !ok {
		return fmt.Errorf("challenge name %q: %w: must start with %q", c.Name, ErrInvalid, ChallengePrefix)
	}
	if err := validName(rest); err != nil {
		return fmt.Errorf("challenge name %q: %w", c.Name, err)
	}
	if len(c.Name) > 253 {
		return fmt.Errorf("challenge name %q: %w: longer than 253 characters", c.Name, ErrInvalid)
	}
	if len(c.Value) == 0 || len(c.Value) > 255 {
		return fmt.Errorf("challenge value: %w: must be 1 to 255 characters", ErrInvalid)
	}
	for i := 0; i < len(c.Value); i++ {
		if b := c.Value[i]; b <= ' ' || b > '~' || b == '"' || b == '\'' {
			return fmt.Errorf("challenge value %q: %w: only printable ASCII without spaces or quotes", c.Value, ErrInvalid)
		}
	}
	return nil
}

// validName checks a dot-separated name of valid labels (one label is fine).
func validName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalid)
	}
	for label := range strings.SplitSeq(name, ".") {
		if err := ValidLabel(label); err != nil {
			return err
		}
	}
	return nil
}

// CheckActivation checks what ActivateWithDomains is given: the repl, a
// generation of 1 or more, and each domain with its token.
func CheckActivation(r Repl, domains []Domain) error {
	if err := CheckRepl(r); err != nil {
		return err
	}
	if r.Generation < 1 {
		return fmt.Errorf("%w: a move needs a generation of 1 or more", ErrInvalid)
	}
	for _, d := range domains {
		if err := ValidDomain(d.Name); err != nil {
			return err
		}
		if err := CheckToken(d.Token); err != nil {
			return fmt.Errorf("domain %s: %w", d.Name, err)
		}
	}
	return nil
}

// CheckToken checks a domain verification token: 1 to 128 of A-Z, a-z,
// 0-9, '_' and '-' (the PostgreSQL schema's rule too).
func CheckToken(token string) error {
	ok := len(token) >= 1 && len(token) <= 128
	for i := 0; ok && i < len(token); i++ {
		c := token[i]
		ok = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
	}
	if !ok {
		if len(token) > 140 {
			token = token[:140] + "..."
		}
		return fmt.Errorf("token %q: %w: want 1 to 128 of A-Z, a-z, 0-9, '_' and '-'", token, ErrInvalid)
	}
	return nil
}

// NewToken returns a random domain verification token (32 hex digits,
// which CheckToken accepts).
func NewToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}
