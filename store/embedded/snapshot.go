package embedded

import (
	"errors"

	"github.com/replproxy/replproxy/store"
)

// The data, three ways: as read from the file with positions (parsedDoc),
// as an immutable snapshot for reads (snapshot), and as maps that a
// write changes (tables).

type replName struct{ owner, slug string }

type challengeKey struct{ name, value string }

// snapshot is one version of the data; it never changes once made.
type snapshot struct {
	// Sorted as the List methods return them: repls by owner and slug,
	// tombstones by repl id, domains by name, challenges by name and value.
	repls      []store.Repl
	tombstones []store.Tombstone
	domains    []store.Domain
	challenges []store.Challenge
	wakes      []store.Wake // by repl id

	replByID     map[string]int // index into repls
	tombByID     map[string]int // index into tombstones
	domainByName map[string]int // index into domains
	wakeByID     map[string]int // index into wakes

	routeByName      map[replName]store.Route
	routeByID        map[string]store.Route
	routeByDomain    map[string]store.Route
	challengesByName map[string][]store.Challenge // sub-slices of challenges

	canon []byte // the canonical YAML of the data: equal bytes, equal data
}

// newSnapshot indexes a checked, sorted doc.
func newSnapshot(d *parsedDoc) (*snapshot, error) {
	canon, err := marshal(d)
	if err != nil {
		return nil, err
	}
	s := &snapshot{
		repls:            d.repls,
		tombstones:       d.tombstones,
		domains:          d.domains,
		challenges:       d.challenges,
		wakes:            d.wakes,
		wakeByID:         make(map[string]int, len(d.wakes)),
		replByID:         make(map[string]int, len(d.repls)),
		tombByID:         make(map[string]int, len(d.tombstones)),
		domainByName:     make(map[string]int, len(d.domains)),
		routeByName:      make(map[replName]store.Route, len(d.repls)+len(d.tombstones)),
		routeByID:        make(map[string]store.Route, len(d.repls)+len(d.tombstones)),
		routeByDomain:    make(map[string]store.Route, len(d.domains)),
		challengesByName: make(map[string][]store.Challenge),
		canon:            canon,
	}
	for i, r := range d.repls {
		s.replByID[r.ID] = i
		rt := store.Route{Kind: store.RouteLocal, ReplID: r.ID, Owner: r.Owner, Slug: r.Slug, Endpoints: r.Endpoints, Generation: r.Generation, Asleep: r.Asleep}
		s.routeByName[replName{r.Owner, r.Slug}] = rt
		s.routeByID[r.ID] = rt
	}
	for i, t := range d.tombstones {
		s.tombByID[t.ReplID] = i
		rt := store.Route{Kind: store.RouteTombstone, ReplID: t.ReplID, Owner: t.Owner, Slug: t.Slug, Cluster: t.Cluster, Generation: t.Generation}
		s.routeByID[t.ReplID] = rt
		// By name, the row store.Prefer picks.
		n := replName{t.Owner, t.Slug}
		if old, ok := s.routeByName[n]; ok && store.Prefer(claimOf(old), claimOf(rt)) {
			continue
		}
		s.routeByName[n] = rt
	}
	for i, dom := range d.domains {
		s.domainByName[dom.Name] = i
		if rt, ok := s.routeByID[dom.ReplID]; ok {
			s.routeByDomain[dom.Name] = rt
		}
	}
	for i, w := range d.wakes {
		s.wakeByID[w.ReplID] = i
	}
	for i := 0; i < len(d.challenges); {
		j := i + 1
		for j < len(d.challenges) && d.challenges[j].Name == d.challenges[i].Name {
			j++
		}
		s.challengesByName[d.challenges[i].Name] = d.challenges[i:j:j]
		i = j
	}
	return s, nil
}

// tables is a copy of the data that a write may change.
type tables struct {
	repls      map[string]store.Repl
	tombstones map[string]store.Tombstone
	domains    map[string]store.Domain
	challenges map[challengeKey]store.Challenge
	wakes      map[string]store.Wake // by repl id
}

func (s *snapshot) data() *tables {
	d := &tables{
		repls:      make(map[string]store.Repl, len(s.repls)+1),
		tombstones: make(map[string]store.Tombstone, len(s.tombstones)+1),
		domains:    make(map[string]store.Domain, len(s.domains)+1),
		challenges: make(map[challengeKey]store.Challenge, len(s.challenges)+1),
		wakes:      make(map[string]store.Wake, len(s.wakes)+1),
	}
	// Endpoints slices are shared: writes replace them, never change them.
	for _, r := range s.repls {
		d.repls[r.ID] = r
	}
	for _, t := range s.tombstones {
		d.tombstones[t.ReplID] = t
	}
	for _, dom := range s.domains {
		d.domains[dom.Name] = dom
	}
	for _, c := range s.challenges {
		d.challenges[challengeKey{c.Name, c.Value}] = c
	}
	for _, w := range s.wakes {
		d.wakes[w.ReplID] = w
	}
	return d
}

func (d *tables) liveByName(owner, slug string) (store.Repl, bool) {
	for _, r := range d.repls {
		if r.Owner == owner && r.Slug == slug {
			return r, true
		}
	}
	return store.Repl{}, false
}

// knows reports whether a repl is live or tombstoned.
func (d *tables) knows(id string) bool {
	_, live := d.repls[id]
	_, tombstoned := d.tombstones[id]
	return live || tombstoned
}

// dropOrphanDomains removes the domains of repls that are neither live nor
// tombstoned any more.
func (d *tables) dropOrphanDomains() {
	for name, dom := range d.domains {
		if !d.knows(dom.ReplID) {
			delete(d.domains, name)
		}
	}
}

// snapshot checks the changed data as a whole, as if it were read from a
// file, and indexes it. Problems wrap ErrInvalid.
func (d *tables) snapshot() (*snapshot, error) {
	doc := &parsedDoc{}
	for _, r := range d.repls {
		doc.repls = append(doc.repls, r)
	}
	for _, t := range d.tombstones {
		doc.tombstones = append(doc.tombstones, t)
	}
	for _, dom := range d.domains {
		doc.domains = append(doc.domains, dom)
	}
	for _, c := range d.challenges {
		doc.challenges = append(doc.challenges, c)
	}
	for id, w := range d.wakes {
		if _, live := d.repls[id]; live { // a repl that went takes its wake along
			doc.wakes = append(doc.wakes, w)
		}
	}
	doc.sort()
	p := &parser{}
	p.check(doc)
	if err := errors.Join(p.errs...); err != nil {
		return nil, err
	}
	return newSnapshot(doc)
}

// load parses and checks a store file and indexes it. The error
// joins every problem, each an *problem naming path and line.
func load(path string, raw []byte) (*snapshot, error) {
	p := &parser{path: path}
	doc := p.parse(raw)
	if doc != nil {
		p.check(doc)
	}
	if err := errors.Join(p.errs...); err != nil {
		return nil, err
	}
	doc.sort()
	doc.pos = [numSections][]*position{}
	return newSnapshot(doc)
}

// claimOf is what a route says about the name it holds.
func claimOf(rt store.Route) store.Claim {
	return store.Claim{Live: rt.Kind == store.RouteLocal, Generation: rt.Generation, ReplID: rt.ReplID}
}
