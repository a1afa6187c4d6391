package store

import "strings"

// KeyKind says which kind of name a Key is.
type KeyKind uint8

// The kinds of names under a zone (DESIGN.md, "Names"), and custom domains outside it.
const (
	// KeyInvalid is the zero Key; ParseName never returns it without an error.
	KeyInvalid KeyKind = iota
	// KeyApex is the zone itself.
	KeyApex
	// KeyOwner is <owner>.<zone>: an empty non-terminal when the owner has repls.
	KeyOwner
	// KeyIDRoot is id.<zone>: the parent of every <repl-id>.id.<zone>.
	KeyIDRoot
	// KeyRepl is <slug>.<owner>.<zone>.
	KeyRepl
	// KeyReplID is <repl-id>.id.<zone>.
	KeyReplID
	// KeyChallenge is _acme-challenge.<name>, where <name> is any other
	// in-zone name (the apex included).
	KeyChallenge
	// KeyDomain is a name outside the zone: a custom domain.
	KeyDomain
)

var keyKindNames = [...]string{
	KeyInvalid:   "invalid",
	KeyApex:      "apex",
	KeyOwner:     "owner",
	KeyIDRoot:    "id-root",
	KeyRepl:      "repl",
	KeyReplID:    "repl-id",
	KeyChallenge: "challenge",
	KeyDomain:    "domain",
}

func (k KeyKind) String() string {
	if int(k) < len(keyKindNames) {
		return keyKindNames[k]
	}
	return "unknown"
}

// Key is a parsed, normalised (lower-case, no trailing dot, no port) name.
// Keys are comparable and are used as map keys by the route cache.
//
// Which fields are set depends on Kind:
//
//	KeyApex       none
//	KeyOwner      Owner
//	KeyIDRoot     none
//	KeyRepl       Owner, Slug
//	KeyReplID     ID
//	KeyChallenge  Name (the whole challenge name, e.g. "_acme-challenge.alice.repl.test")
//	KeyDomain     Name (the custom domain, e.g. "www.example.com")
type Key struct {
	Kind  KeyKind
	Owner string
	Slug  string
	ID    string
	Name  string
}

// ReplKey returns the key of the repl slug of owner.
func ReplKey(owner, slug string) Key { return Key{Kind: KeyRepl, Owner: owner, Slug: slug} }

// ReplIDKey returns the key of the repl with the given id.
func ReplIDKey(id string) Key { return Key{Kind: KeyReplID, ID: id} }

// DomainKey returns the key of a custom domain.
func DomainKey(domain string) Key { return Key{Kind: KeyDomain, Name: domain} }

// Routable reports whether the key names something a route can be looked
// up for: a repl by name or id, or a custom domain.
func (k Key) Routable() bool {
	return k.Kind == KeyRepl || k.Kind == KeyReplID || k.Kind == KeyDomain
}

// String returns a short form for logs, e.g. "repl:alice/blog".
func (k Key) String() string {
	var b strings.Builder
	b.WriteString(k.Kind.String())
	b.WriteByte(':')
	switch k.Kind {
	case KeyOwner:
		b.WriteString(k.Owner)
	case KeyRepl:
		b.WriteString(k.Owner)
		b.WriteByte('/')
		b.WriteString(k.Slug)
	case KeyReplID:
		b.WriteString(k.ID)
	case KeyChallenge, KeyDomain:
		b.WriteString(k.Name)
	}
	return b.String()
}
