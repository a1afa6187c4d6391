package store

import (
	"context"
	"errors"
	"time"
)

// Errors returned by every backend. Test with errors.Is.
var (
	// ErrNotFound: no such repl, tombstone, domain or route.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the write would break a uniqueness rule (an owner/slug,
	// id or domain already taken).
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the value breaks a rule of the data model (a bad label,
	// no endpoints, a domain that names a repl that does not exist).
	ErrInvalid = errors.New("invalid")
	// ErrUnavailable: the backend could not be reached.
	ErrUnavailable = errors.New("store unavailable")
)

// Repl is a user's app, live in this cluster.
type Repl struct {
	ID    string // a label; unique across all clusters
	Owner string // a label; "id" is reserved
	Slug  string // a label; unique per owner
	// Endpoints are the container addresses (host:port) in this cluster.
	Endpoints []string
	// Generation grows by one on every move; the highest one is current.
	Generation int64
	// Asleep: the repl has no running container (the platform's container
	// manager stopped it); its row stays and its names still route to this
	// cluster, and a request asks for a wake. Endpoints may be empty then.
	Asleep    bool
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Tombstone says that a repl moved from this cluster to another one.
type Tombstone struct {
	ReplID     string
	Owner      string // the repl's owner and slug, so names still find it
	Slug       string
	Cluster    string // where it lives now
	Generation int64  // the repl's generation in Cluster
	MovedAt    time.Time
}

// Domain is a custom domain linked to a repl.
type Domain struct {
	Name   string // lower-case, no trailing dot, e.g. "www.example.com"
	ReplID string
	// Token is the value the owner publishes as TXT "replproxy-verify=<Token>".
	Token      string
	VerifiedAt time.Time // zero until verified
	CreatedAt  time.Time
}

// Challenge is one DNS-01 TXT record.
type Challenge struct {
	Name      string // e.g. "_acme-challenge.alice.repl.test"
	Value     string
	ExpiresAt time.Time
}

// RouteKind says where a request for a name goes.
type RouteKind uint8

const (
	// RouteLocal: the repl is live in this cluster; use Route.Endpoints.
	RouteLocal RouteKind = iota + 1
	// RouteTombstone: the repl moved; forward to Route.Cluster.
	RouteTombstone
)

func (k RouteKind) String() string {
	switch k {
	case RouteLocal:
		return "local"
	case RouteTombstone:
		return "tombstone"
	}
	return "none"
}

// Route is the answer to a lookup of a routable Key. Its slices are shared
// and must not be modified.
type Route struct {
	Kind       RouteKind
	ReplID     string
	Owner      string
	Slug       string
	Endpoints  []string // RouteLocal
	Cluster    string   // RouteTombstone
	Generation int64
	Asleep     bool // RouteLocal: the repl is asleep (Repl.Asleep)
}

// Stats counts what a store holds.
type Stats struct {
	Repls      int
	Tombstones int
	Domains    int
	Challenges int
}

// EventKind says what changed.
type EventKind uint8

const (
	// EventResync: the watcher (re)connected and may have missed changes;
	// consumers must treat everything they hold as possibly stale.
	EventResync EventKind = iota + 1
	// EventRepl: a repl's live row or tombstone changed (ReplID, Owner, Slug).
	EventRepl
	// EventDomain: a custom domain changed (Name).
	EventDomain
	// EventChallenge: a challenge record changed (Name).
	EventChallenge
	// EventLost: the watcher lost its connection; changes made from now
	// until the next EventResync are not notified. Consumers that act on
	// what they hold (a tombstone) should confirm it with the store.
	EventLost
	// EventWake: the repl's wake was requested, claimed or failed, or
	// went (ReplID). FinishWake changes the repl's row too: EventRepl.
	EventWake
	// EventResume: after an EventLost, the watcher reconnected and goes on
	// from where it was in the store's change log (a Feed): no change was
	// missed, and what consumers hold is as current as before.
	EventResume
	// EventCertificate: a certificate of the cluster's cache changed (Name).
	EventCertificate
)

func (k EventKind) String() string {
	switch k {
	case EventResync:
		return "resync"
	case EventRepl:
		return "repl"
	case EventDomain:
		return "domain"
	case EventChallenge:
		return "challenge"
	case EventLost:
		return "lost"
	case EventWake:
		return "wake"
	case EventResume:
		return "resume"
	case EventCertificate:
		return "certificate"
	}
	return "unknown"
}

// Event is one change notification. It carries only keys: consumers look
// the data up again.
type Event struct {
	Kind   EventKind
	ReplID string
	Owner  string
	Slug   string
	Name   string
	// Pos numbers the change in the store's change log (a Feed); 0 when
	// the store has none, and for EventResync, EventLost and EventResume.
	Pos int64
}

// Reader is what the daemons need on their request path.
type Reader interface {
	// Lookup resolves a routable key (KeyRepl, KeyReplID, KeyDomain) to a
	// live repl or a tombstone. It returns ErrNotFound when there is
	// neither, and ErrInvalid for a key that is not routable.
	Lookup(ctx context.Context, k Key) (Route, error)
	// Challenges returns the unexpired challenge records named name.
	Challenges(ctx context.Context, name string) ([]Challenge, error)
	// Watch calls fn for every change until ctx is done, then returns
	// ctx's error. It sends EventResync first, once changes from then on
	// will be delivered, and again whenever it may have missed some (a
	// reconnection, or a change log pruned past its position). A store
	// with a change log (a Feed) resumes after a lost connection instead:
	// EventLost, then EventResume and the changes made meanwhile. fn is
	// called from one goroutine and must not block for long.
	Watch(ctx context.Context, fn func(Event)) error
}

// Store is the whole data model of one cluster. Every method is safe for
// concurrent use. Every write is atomic: it happens whole or not at all.
type Store interface {
	// ListAll returns the store's repls, tombstones, domains and unexpired
	// challenge records as of one instant.
	ListAll(ctx context.Context) (Snapshot, error)
	Moves
	Reader
	Wakes

	// CreateRepl adds a live repl with generation 1 (or r.Generation when
	// set). ErrInvalid when a label is bad (ValidLabel, ValidOwner) or an
	// endpoint is not host:port; ErrConflict when the id is live or has a
	// tombstone here, or the owner/slug is live here. A tombstone with the
	// same owner/slug does not conflict: lookups prefer the live row.
	CreateRepl(ctx context.Context, r Repl) (Repl, error)
	// GetRepl returns a live repl; ErrNotFound when it is not live here.
	GetRepl(ctx context.Context, id string) (Repl, error)
	// ListRepls returns the live repls ordered by owner, slug; owner ""
	// means every owner. ListTombstones orders by repl id, ListDomains by
	// name; Challenges by value.
	ListRepls(ctx context.Context, owner string) ([]Repl, error)
	// SetEndpoints replaces a live repl's endpoints.
	SetEndpoints(ctx context.Context, id string, endpoints []string) (Repl, error)
	// DeleteRepl removes a live repl and its custom domains; ErrNotFound
	// when it is not live here.
	DeleteRepl(ctx context.Context, id string) error

	// Move steps (DESIGN.md, "Moving a repl"). Each is idempotent.

	// Activate makes r live here with r.Generation (step 1 in the
	// destination), in one transaction: it inserts the live row, or
	// updates it when its generation is lower (a row with the same or a
	// higher generation is left as it is and returned), and removes this
	// cluster's tombstone for the repl. A tombstone whose generation is
	// r.Generation or higher means the repl has moved on since:
	// ErrConflict, nothing changes.
	Activate(ctx context.Context, r Repl) (Repl, error)
	// ActivateWithDomains is Activate that also links the repl's custom
	// domains here, with their tokens and verification times, in the same
	// transaction: a move stopped right after step 1 leaves none of them
	// unknown in the destination. A domain already linked here to this
	// repl is left as it is; one linked to another repl is ErrConflict,
	// and nothing changes. It links them also when the live row was
	// already there (a rerun).
	ActivateWithDomains(ctx context.Context, r Repl, domains []Domain) (Repl, error)
	// Retire replaces the live row of a repl with a tombstone to cluster
	// at generation in one transaction (step 2 in the source). A
	// tombstone already there with that generation or a higher one is
	// returned unchanged; one with a lower generation is repointed. A
	// live row whose generation is not below generation means the repl
	// came back here since: ErrConflict. Neither row: ErrNotFound.
	Retire(ctx context.Context, replID, cluster string, generation int64) (Tombstone, error)
	// Repoint makes this cluster's tombstone for the repl name cluster
	// and generation (step 3 in the other clusters), unless it already
	// names that generation or a higher one. ErrNotFound when there is
	// no tombstone for the repl here.
	Repoint(ctx context.Context, replID, cluster string, generation int64) error

	GetTombstone(ctx context.Context, replID string) (Tombstone, error)
	ListTombstones(ctx context.Context) ([]Tombstone, error)
	// CollectTombstones removes tombstones that moved before cutoff, and
	// the custom domains that named only them. It returns how many went.
	CollectTombstones(ctx context.Context, cutoff time.Time) (int, error)

	// LinkDomain links a custom domain (ValidDomain) to a repl that is
	// live here or has a tombstone here (else ErrNotFound). An empty
	// Token is filled with a random one. ErrConflict when the domain is
	// taken. Linked domains route whether verified or not.
	LinkDomain(ctx context.Context, d Domain) (Domain, error)
	// UnlinkDomain removes a link; ErrNotFound when there is none.
	UnlinkDomain(ctx context.Context, name string) error
	GetDomain(ctx context.Context, name string) (Domain, error)
	// ListDomains returns the domains of one repl, or all when replID is "".
	ListDomains(ctx context.Context, replID string) ([]Domain, error)
	// MarkDomainVerified records that ownership of the domain was proven
	// at; ErrNotFound when the domain is not linked.
	MarkDomainVerified(ctx context.Context, name string, at time.Time) error

	// PutChallenge adds a challenge record or sets the expiry of an
	// existing one (same name and value). The name is "_acme-challenge."
	// followed by a valid name; the value is 1–255 printable ASCII
	// characters without spaces or quotes (ErrInvalid otherwise).
	PutChallenge(ctx context.Context, c Challenge) error
	// DeleteChallenge removes one record (name and value); removing one
	// that is not there is not an error.
	DeleteChallenge(ctx context.Context, name, value string) error
	// DeleteExpiredChallenges removes records that expired before now.
	DeleteExpiredChallenges(ctx context.Context, now time.Time) (int, error)

	Stats(ctx context.Context) (Stats, error)
	// Close releases the backend's resources.
	Close() error
}

// Claim is what one row, a live repl or a tombstone, says about the
// owner/slug name it carries. Several rows of a cluster may carry one name
// (a tombstone of a repl that moved away and a new repl given its name, or
// tombstones of several repls that held the name in turn); Prefer decides
// which one owns it.
type Claim struct {
	Live       bool
	Generation int64
	ReplID     string
}

// Prefer reports whether a owns the name over b: a live row over a
// tombstone, then the higher generation, then the smaller repl id. It is
// the one rule for this: both backends' lookups and replns's name index
// follow it, so they agree on every tie.
func Prefer(a, b Claim) bool {
	if a.Live != b.Live {
		return a.Live
	}
	if a.Generation != b.Generation {
		return a.Generation > b.Generation
	}
	return a.ReplID < b.ReplID
}

// Snapshot is every repl, tombstone and custom domain of a store as of one
// instant: what a name index is built from (lists read one after another
// could miss a repl that moves between them).
type Snapshot struct {
	Repls      []Repl
	Tombstones []Tombstone
	Domains    []Domain
	Challenges []Challenge // unexpired ones, ordered by name and value
}
