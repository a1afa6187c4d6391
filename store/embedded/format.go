package embedded

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/replproxy/replproxy/internal/yamlline"
	"github.com/replproxy/replproxy/store"
	"go.yaml.in/yaml/v3"
)

// parsedDoc is the data in file order, with where each item was.
type parsedDoc struct {
	repls      []store.Repl
	tombstones []store.Tombstone
	domains    []store.Domain
	challenges []store.Challenge
	wakes      []store.Wake
	// pos[section][i] is where item i of a section was; the lists are
	// empty when the data did not come from a file.
	pos [numSections][]*position
}

// The sections of the file, in order.
const (
	secRepls = iota
	secTombstones
	secDomains
	secChallenges
	secWakes
	numSections
)

var sections = [numSections]string{"repls", "tombstones", "domains", "challenges", "wakes"}

// at returns where item i of a section was, or nil.
func (d *parsedDoc) at(section, i int) *position {
	if list := d.pos[section]; i < len(list) {
		return list[i]
	}
	return nil
}

func (d *parsedDoc) sort() {
	slices.SortFunc(d.repls, func(a, b store.Repl) int {
		return cmp.Or(strings.Compare(a.Owner, b.Owner), strings.Compare(a.Slug, b.Slug), strings.Compare(a.ID, b.ID))
	})
	slices.SortFunc(d.tombstones, func(a, b store.Tombstone) int { return strings.Compare(a.ReplID, b.ReplID) })
	slices.SortFunc(d.domains, func(a, b store.Domain) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(d.challenges, func(a, b store.Challenge) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Value, b.Value))
	})
	slices.SortFunc(d.wakes, func(a, b store.Wake) int { return strings.Compare(a.ReplID, b.ReplID) })
}

// position is where an item was in the file. A nil *position (data
// not from a file) has every field given, at line 0.
type position struct {
	line   int
	broken bool           // not a mapping: nothing in it was read
	fields map[string]int // the line of each field given
	bad    map[string]bool
	elems  []int // the line of each endpoint
}

func (p *position) at(field string) int {
	if p == nil {
		return 0
	}
	if l, ok := p.fields[field]; ok {
		return l
	}
	return p.line
}

func (p *position) given(field string) bool {
	if p == nil {
		return true
	}
	_, ok := p.fields[field]
	return ok
}

func (p *position) elemAt(i int) int {
	if p == nil || i >= len(p.elems) {
		return p.at("endpoints")
	}
	return p.elems[i]
}

func (p *position) lineOf() int {
	if p == nil {
		return 0
	}
	return p.line
}

// problem is one problem in a store file. It unwraps to ErrInvalid.
type problem struct {
	path string // "" for data that did not come from a file
	line int
	msg  string
}

func (e *problem) Error() string {
	switch {
	case e.path == "":
		return e.msg
	case e.line > 0:
		return fmt.Sprintf("%s:%d: %s", e.path, e.line, e.msg)
	}
	return e.path + ": " + e.msg
}

func (e *problem) Unwrap() error { return store.ErrInvalid }

// parser reads the YAML nodes of a store file and checks the data,
// collecting every problem.
type parser struct {
	path string
	errs []error
}

func (p *parser) fail(line int, format string, args ...any) {
	p.errs = append(p.errs, &problem{path: p.path, line: line, msg: fmt.Sprintf(format, args...)})
}

// also returns " (line N)" to point at another item, or "" without a file.
func also(line int) string {
	if line <= 0 {
		return ""
	}
	return fmt.Sprintf(" (line %d)", line)
}

// The fields of each kind of item, as written in the file.
var itemFields = [numSections][]string{
	{"id", "owner", "slug", "endpoints", "generation", "asleep", "created_at", "updated_at"},
	{"repl_id", "owner", "slug", "cluster", "generation", "moved_at"},
	{"name", "repl_id", "token", "verified_at", "created_at"},
	{"name", "value", "expires_at"},
	{"repl_id", "requested_at", "requested_by", "claimed_by", "claimed_at", "failed", "failed_at"},
}

// parse reads the file's structure and values; check then applies the
// rules. It returns nil when the file is not YAML or not shaped like a
// store.
func (p *parser) parse(raw []byte) *parsedDoc {
	doc := &parsedDoc{}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var top yaml.Node
	if err := dec.Decode(&top); err != nil {
		if errors.Is(err, io.EOF) {
			return doc // an empty file
		}
		p.yamlError(raw, err)
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.fail(extra.Line, "a second YAML document; the store is one document: remove this \"---\" and what follows")
		return nil
	} else if !errors.Is(err, io.EOF) {
		p.yamlError(raw, err)
		return nil
	}
	root := &top
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return doc // only comments
		}
		root = yamlline.Deref(root.Content[0])
	}
	if yamlline.IsNull(root) {
		return doc
	}
	if root.Kind != yaml.MappingNode {
		p.fail(root.Line, "the file must be a mapping with repls, tombstones, domains, challenges and wakes, not %s", yamlline.Describe(root, nil))
		return nil
	}
	fields := p.mapping(root, "", sections[:], "the top level has repls, tombstones, domains, challenges and wakes")
	for sec, name := range sections {
		list, ok := fields[name]
		if !ok || yamlline.IsNull(list) {
			continue
		}
		if list.Kind != yaml.SequenceNode {
			p.fail(list.Line, "%s: must be a list, one \"- %s: ...\" entry each, not %s", name, itemFields[sec][0], yamlline.Describe(list, nil))
			continue
		}
		for i, item := range list.Content {
			p.item(doc, sec, fmt.Sprintf("%s[%d]", name, i), yamlline.Deref(item))
		}
	}
	return doc
}

// item reads one entry of a section into doc.
func (p *parser) item(doc *parsedDoc, sec int, path string, n *yaml.Node) {
	pos := &position{line: n.Line, fields: map[string]int{}, bad: map[string]bool{}}
	doc.pos[sec] = append(doc.pos[sec], pos)
	var fields map[string]*yaml.Node
	if n.Kind != yaml.MappingNode {
		p.fail(n.Line, "%s: must be a mapping with %s, not %s", path, strings.Join(itemFields[sec], ", "), yamlline.Describe(n, nil))
		pos.broken = true
	} else {
		fields = p.mapping(n, path, itemFields[sec],
			fmt.Sprintf("an entry of %s has %s", sections[sec], strings.Join(itemFields[sec], ", ")))
	}
	v := values{p: p, path: path, fields: fields, pos: pos}
	switch sec {
	case secRepls:
		r := store.Repl{
			ID: v.str("id"), Owner: v.str("owner"), Slug: v.str("slug"),
			Endpoints:  v.endpoints(),
			Generation: v.integer("generation", 1),
			Asleep:     v.boolean("asleep"),
			CreatedAt:  v.timestamp("created_at"), UpdatedAt: v.timestamp("updated_at"),
		}
		doc.repls = append(doc.repls, r)
	case secTombstones:
		doc.tombstones = append(doc.tombstones, store.Tombstone{
			ReplID: v.str("repl_id"), Owner: v.str("owner"), Slug: v.str("slug"),
			Cluster: v.str("cluster"), Generation: v.integer("generation", 0), MovedAt: v.timestamp("moved_at"),
		})
	case secDomains:
		doc.domains = append(doc.domains, store.Domain{
			Name: v.str("name"), ReplID: v.str("repl_id"), Token: v.str("token"),
			VerifiedAt: v.timestamp("verified_at"), CreatedAt: v.timestamp("created_at"),
		})
	case secChallenges:
		doc.challenges = append(doc.challenges, store.Challenge{
			Name: v.str("name"), Value: v.str("value"), ExpiresAt: v.timestamp("expires_at"),
		})
	case secWakes:
		doc.wakes = append(doc.wakes, store.Wake{
			ReplID: v.str("repl_id"), RequestedAt: v.timestamp("requested_at"), RequestedBy: v.str("requested_by"),
			ClaimedBy: v.str("claimed_by"), ClaimedAt: v.timestamp("claimed_at"),
			Failed: v.str("failed"), FailedAt: v.timestamp("failed_at"),
		})
	}
}

// values reads the fields of one item, recording where each was
// and reporting values of the wrong shape.
type values struct {
	p      *parser
	path   string
	fields map[string]*yaml.Node
	pos    *position
}

// scalar returns a field's node when it is a scalar; nil when it is
// missing or null.
func (v values) scalar(key string) *yaml.Node {
	n, ok := v.fields[key]
	if !ok || yamlline.IsNull(n) {
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		v.p.fail(n.Line, "%s.%s: must be a single value, not %s", v.path, key, yamlline.Describe(n, nil))
		v.pos.bad[key] = true
		return nil
	}
	v.pos.fields[key] = n.Line
	return n
}

func (v values) str(key string) string {
	if n := v.scalar(key); n != nil {
		return n.Value
	}
	return ""
}

// integer reads a whole number; def != 0 makes the field optional.
func (v values) integer(key string, def int64) int64 {
	n := v.scalar(key)
	if n == nil {
		if def != 0 && !v.pos.bad[key] {
			v.pos.fields[key] = v.pos.line // the default stands in
		}
		return def
	}
	var i int64
	if err := n.Decode(&i); err != nil || n.Tag != "!!int" {
		v.p.fail(n.Line, "%s.%s: %q is not a whole number", v.path, key, n.Value)
		v.pos.bad[key] = true
		return def
	}
	return i
}

// boolean reads an optional true or false (default false).
func (v values) boolean(key string) bool {
	n := v.scalar(key)
	if n == nil {
		return false
	}
	var b bool
	if err := n.Decode(&b); err != nil || n.Tag != "!!bool" {
		v.p.fail(n.Line, "%s.%s: %q is not true or false", v.path, key, n.Value)
		v.pos.bad[key] = true
		return false
	}
	return b
}

// timestamp reads an optional RFC 3339 time.
func (v values) timestamp(key string) time.Time {
	n := v.scalar(key)
	if n == nil {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, n.Value)
	if err != nil {
		v.p.fail(n.Line, "%s.%s: %q is not an RFC 3339 time such as 2026-11-29T10:00:00Z", v.path, key, n.Value)
		v.pos.bad[key] = true
		return time.Time{}
	}
	return t.UTC()
}

func (v values) endpoints() []string {
	n, ok := v.fields["endpoints"]
	if !ok || yamlline.IsNull(n) {
		return nil
	}
	v.pos.fields["endpoints"] = n.Line
	if n.Kind != yaml.SequenceNode {
		v.p.fail(n.Line, "%s.endpoints: must be a list of host:port, e.g. [127.0.0.1:9001], not %s", v.path, yamlline.Describe(n, nil))
		v.pos.bad["endpoints"] = true
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, e := range n.Content {
		e = yamlline.Deref(e)
		if e.Kind != yaml.ScalarNode {
			v.p.fail(e.Line, "%s.endpoints[%d]: must be host:port, not %s", v.path, i, yamlline.Describe(e, nil))
			v.pos.bad["endpoints"] = true
			continue
		}
		out = append(out, e.Value)
		v.pos.elems = append(v.pos.elems, e.Line)
	}
	return out
}

// check applies the rules of the data model to doc, item by item and
// across items.
func (p *parser) check(d *parsedDoc) {
	c := &checker{p: p, d: d}
	c.repls()
	c.tombstones()
	c.domains()
	c.challenges()
	c.wakes()
}

// checker is one run of check: what was seen so far, by key, so that
// duplicates name their first use.
type checker struct {
	p     *parser
	d     *parsedDoc
	live  map[string]seen // repl id → where
	tombs map[string]seen // repl id → where
}

// seen is where an item was given.
type seen struct {
	path string
	line int
}

// field checks a field: missing, or broken by value.
func (c *checker) field(pos *position, path, key string, hint string, check func() error) {
	if pos != nil && pos.bad[key] {
		return
	}
	if !pos.given(key) {
		c.p.fail(pos.lineOf(), "%s.%s: missing; %s", path, key, hint)
		return
	}
	if err := check(); err != nil {
		c.p.fail(pos.at(key), "%s.%s: %v", path, key, err)
	}
}

// unique records key as given at path, or reports that it was given
// before: msg says which rule that breaks, given where it was first.
func unique[K comparable](c *checker, m map[K]seen, key K, path string, line int, msg func(first string) string) {
	if first, dup := m[key]; dup {
		c.p.fail(line, "%s: %s", path, msg(first.path+also(first.line)))
		return
	}
	m[key] = seen{path, line}
}

// item returns the position and path of item i of section sec, and
// whether it is to be checked (its shape was not broken already).
func (c *checker) item(sec, i int) (*position, string, bool) {
	pos := c.d.at(sec, i)
	return pos, fmt.Sprintf("%s[%d]", sections[sec], i), pos == nil || !pos.broken
}

func checkLabel(s string) func() error { return func() error { return store.ValidLabel(s) } }
func checkOwner(s string) func() error { return func() error { return store.ValidOwner(s) } }
func checkGeneration(g int64) func() error {
	return func() error {
		if g < 1 {
			return fmt.Errorf("%d: must be 1 or more", g)
		}
		return nil
	}
}

// present passes a field whose value was read (and checked) already.
func present() error { return nil }

func (c *checker) repls() {
	c.live = make(map[string]seen, len(c.d.repls))
	names := make(map[replName]seen, len(c.d.repls))
	for i, r := range c.d.repls {
		pos, path, ok := c.item(secRepls, i)
		if !ok {
			continue
		}
		c.field(pos, path, "id", "give the repl's id, a DNS label", checkLabel(r.ID))
		c.field(pos, path, "owner", "give the repl's owner, a DNS label", checkOwner(r.Owner))
		c.field(pos, path, "slug", "give the repl's slug, a DNS label", checkLabel(r.Slug))
		if !r.Asleep || len(r.Endpoints) > 0 { // an asleep repl needs none
			c.checkEndpoints(pos, path, r)
		}
		c.field(pos, path, "generation", "", checkGeneration(r.Generation))

		if r.ID != "" {
			unique(c, c.live, r.ID, path, pos.lineOf(), func(f string) string { return "id " + r.ID + " is already used by " + f })
		}
		if r.Owner != "" && r.Slug != "" {
			unique(c, names, replName{r.Owner, r.Slug}, path, pos.lineOf(), func(f string) string {
				return "owner/slug " + r.Owner + "/" + r.Slug + " is already used by " + f
			})
		}
	}
}

// checkEndpoints checks a repl's endpoints, each on its own line.
func (c *checker) checkEndpoints(pos *position, path string, r store.Repl) {
	c.field(pos, path, "endpoints", "list the container addresses, e.g. [127.0.0.1:9001] (or set asleep: true)", func() error {
		if len(r.Endpoints) == 0 {
			return store.CheckEndpoints(nil)
		}
		for j, e := range r.Endpoints {
			if err := store.CheckEndpoints([]string{e}); err != nil {
				c.p.fail(pos.elemAt(j), "%s.endpoints[%d]: %v", path, j, err)
			}
		}
		return nil
	})
}

func (c *checker) tombstones() {
	c.tombs = make(map[string]seen, len(c.d.tombstones))
	for i, t := range c.d.tombstones {
		pos, path, ok := c.item(secTombstones, i)
		if !ok {
			continue
		}
		c.field(pos, path, "repl_id", "give the id of the repl that moved", checkLabel(t.ReplID))
		c.field(pos, path, "owner", "give the repl's owner", checkOwner(t.Owner))
		c.field(pos, path, "slug", "give the repl's slug", checkLabel(t.Slug))
		c.field(pos, path, "cluster", "give the cluster the repl moved to", checkLabel(t.Cluster))
		c.field(pos, path, "generation", "give the repl's generation in that cluster", checkGeneration(t.Generation))
		c.field(pos, path, "moved_at", "give the time of the move (RFC 3339), e.g. 2026-11-29T10:00:00Z", present)

		if t.ReplID == "" {
			continue
		}
		unique(c, c.tombs, t.ReplID, path, pos.lineOf(), func(f string) string {
			return "repl " + t.ReplID + " already has a tombstone, " + f + "; keep one"
		})
		if l, ok := c.live[t.ReplID]; ok {
			c.p.fail(pos.lineOf(), "%s: repl %s is both live, as %s%s, and tombstoned; remove one of them",
				path, t.ReplID, l.path, also(l.line))
		}
	}
}

func (c *checker) domains() {
	names := make(map[string]seen, len(c.d.domains))
	for i, dom := range c.d.domains {
		pos, path, ok := c.item(secDomains, i)
		if !ok {
			continue
		}
		c.field(pos, path, "name", "give the custom domain, e.g. www.example.com", func() error { return store.ValidDomain(dom.Name) })
		c.field(pos, path, "repl_id", "give the id of the repl the domain is linked to", checkLabel(dom.ReplID))
		c.field(pos, path, "token", "give a verification token of 1 to 128 of A-Z, a-z, 0-9, '_' and '-', e.g. "+store.NewToken(),
			func() error { return store.CheckToken(dom.Token) })

		if dom.Name != "" {
			unique(c, names, dom.Name, path, pos.lineOf(), func(f string) string {
				return "domain " + dom.Name + " is already linked by " + f + "; keep one"
			})
		}
		if _, isLive := c.live[dom.ReplID]; dom.ReplID != "" && !isLive {
			if _, tombstoned := c.tombs[dom.ReplID]; !tombstoned {
				c.p.fail(pos.at("repl_id"), "%s: repl %s is neither live nor tombstoned here; link the domain to a repl in this file", path, dom.ReplID)
			}
		}
	}
}

func (c *checker) challenges() {
	records := make(map[challengeKey]seen, len(c.d.challenges))
	for i, ch := range c.d.challenges {
		pos, path, ok := c.item(secChallenges, i)
		if !ok {
			continue
		}
		// CheckChallenge checks both; give each half the other's
		// good example so that each problem gets its own line.
		c.field(pos, path, "name", "give the record's name, e.g. _acme-challenge.alice.repl.test", func() error {
			return store.CheckChallenge(store.Challenge{Name: ch.Name, Value: "x"})
		})
		c.field(pos, path, "value", "give the record's value", func() error {
			return store.CheckChallenge(store.Challenge{Name: store.ChallengePrefix + "x", Value: ch.Value})
		})
		c.field(pos, path, "expires_at", "give the record's expiry (RFC 3339), e.g. 2026-11-29T11:00:00Z", present)

		k := challengeKey{ch.Name, ch.Value}
		unique(c, records, k, path, pos.lineOf(), func(f string) string {
			return fmt.Sprintf("the record %s %q is already given as %s; keep one", ch.Name, ch.Value, f)
		})
	}
}

func (c *checker) wakes() {
	seenWake := make(map[string]seen, len(c.d.wakes))
	for i, w := range c.d.wakes {
		pos, path, ok := c.item(secWakes, i)
		if !ok {
			continue
		}
		c.field(pos, path, "repl_id", "give the id of the repl to wake", checkLabel(w.ReplID))
		c.field(pos, path, "requested_at", "give the time of the request (RFC 3339), e.g. 2026-11-29T10:00:00Z", present)
		c.field(pos, path, "requested_by", "give who asked, e.g. replctl", func() error { return store.CheckWakeName("requested_by", w.RequestedBy) })
		if pos.given("claimed_by") != pos.given("claimed_at") && !pos.bad["claimed_by"] && !pos.bad["claimed_at"] {
			c.p.fail(pos.lineOf(), "%s: give claimed_by and claimed_at together, or neither", path)
		} else if pos.given("claimed_by") && w.ClaimedBy != "" {
			c.field(pos, path, "claimed_by", "", func() error { return store.CheckWakeName("claimed_by", w.ClaimedBy) })
		}
		if pos.given("failed") != pos.given("failed_at") && !pos.bad["failed"] && !pos.bad["failed_at"] {
			c.p.fail(pos.lineOf(), "%s: give failed and failed_at together, or neither", path)
		} else if pos.given("failed") && len(w.Failed) > store.MaxWakeText {
			c.p.fail(pos.at("failed"), "%s.failed: longer than %d bytes", path, store.MaxWakeText)
		}
		if w.ReplID == "" {
			continue
		}
		unique(c, seenWake, w.ReplID, path, pos.lineOf(), func(f string) string {
			return "repl " + w.ReplID + " already has a wake, " + f + "; keep one"
		})
		if _, live := c.live[w.ReplID]; !live {
			c.p.fail(pos.at("repl_id"), "%s: repl %s is not live here; a wake is for a live repl of this file", path, w.ReplID)
		}
	}
}

// The file as written: the canonical form of the data.

type fileForm struct {
	Repls      []fileRepl      `yaml:"repls"`
	Tombstones []fileTombstone `yaml:"tombstones"`
	Domains    []fileDomain    `yaml:"domains"`
	Challenges []fileChallenge `yaml:"challenges"`
	Wakes      []fileWake      `yaml:"wakes,omitempty"`
}

type fileRepl struct {
	ID         string   `yaml:"id"`
	Owner      string   `yaml:"owner"`
	Slug       string   `yaml:"slug"`
	Endpoints  []string `yaml:"endpoints,flow"`
	Generation int64    `yaml:"generation"`
	Asleep     bool     `yaml:"asleep,omitempty"`
	CreatedAt  string   `yaml:"created_at,omitempty"`
	UpdatedAt  string   `yaml:"updated_at,omitempty"`
}

type fileTombstone struct {
	ReplID     string `yaml:"repl_id"`
	Owner      string `yaml:"owner"`
	Slug       string `yaml:"slug"`
	Cluster    string `yaml:"cluster"`
	Generation int64  `yaml:"generation"`
	MovedAt    string `yaml:"moved_at"`
}

type fileDomain struct {
	Name       string `yaml:"name"`
	ReplID     string `yaml:"repl_id"`
	Token      string `yaml:"token"`
	VerifiedAt string `yaml:"verified_at,omitempty"`
	CreatedAt  string `yaml:"created_at,omitempty"`
}

type fileChallenge struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ExpiresAt string `yaml:"expires_at"`
}

type fileWake struct {
	ReplID      string `yaml:"repl_id"`
	RequestedAt string `yaml:"requested_at"`
	RequestedBy string `yaml:"requested_by"`
	ClaimedBy   string `yaml:"claimed_by,omitempty"`
	ClaimedAt   string `yaml:"claimed_at,omitempty"`
	Failed      string `yaml:"failed,omitempty"`
	FailedAt    string `yaml:"failed_at,omitempty"`
}

// formatTime writes a time in RFC 3339, "" for the zero time.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func marshal(d *parsedDoc) ([]byte, error) {
	f := fileForm{
		Repls:      make([]fileRepl, 0, len(d.repls)),
		Tombstones: make([]fileTombstone, 0, len(d.tombstones)),
		Domains:    make([]fileDomain, 0, len(d.domains)),
		Challenges: make([]fileChallenge, 0, len(d.challenges)),
	}
	for _, r := range d.repls {
		f.Repls = append(f.Repls, fileRepl{
			ID: r.ID, Owner: r.Owner, Slug: r.Slug, Endpoints: r.Endpoints, Generation: r.Generation, Asleep: r.Asleep,
			CreatedAt: formatTime(r.CreatedAt), UpdatedAt: formatTime(r.UpdatedAt),
		})
	}
	for _, t := range d.tombstones {
		f.Tombstones = append(f.Tombstones, fileTombstone{
			ReplID: t.ReplID, Owner: t.Owner, Slug: t.Slug, Cluster: t.Cluster, Generation: t.Generation,
			MovedAt: t.MovedAt.UTC().Format(time.RFC3339Nano),
		})
	}
	for _, dom := range d.domains {
		f.Domains = append(f.Domains, fileDomain{
			Name: dom.Name, ReplID: dom.ReplID, Token: dom.Token,
			VerifiedAt: formatTime(dom.VerifiedAt), CreatedAt: formatTime(dom.CreatedAt),
		})
	}
	for _, c := range d.challenges {
		f.Challenges = append(f.Challenges, fileChallenge{
			Name: c.Name, Value: c.Value, ExpiresAt: c.ExpiresAt.UTC().Format(time.RFC3339Nano),
		})
	}
	for _, w := range d.wakes {
		f.Wakes = append(f.Wakes, fileWake{
			ReplID: w.ReplID, RequestedAt: w.RequestedAt.UTC().Format(time.RFC3339Nano), RequestedBy: w.RequestedBy,
			ClaimedBy: w.ClaimedBy, ClaimedAt: formatTime(w.ClaimedAt), Failed: w.Failed, FailedAt: formatTime(w.FailedAt),
		})
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&f); err != nil {
		return nil, fmt.Errorf("encode embedded store: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode embedded store: %w", err)
	}
	return b.Bytes(), nil
}

// mapping returns the fields of a mapping node, reporting unknown and
// repeated ones.
func (p *parser) mapping(n *yaml.Node, path string, known []string, hint string) map[string]*yaml.Node {
	return yamlline.Fields(n, path, known, hint, func(line int, field, msg string) {
		p.fail(line, "%s: %s", field, msg)
	})
}

// yamlError reports a YAML syntax error in raw, at its real line.
func (p *parser) yamlError(raw []byte, err error) {
	line, msg := yamlline.SyntaxError(raw, err)
	p.fail(line, "not valid YAML: %s", msg)
}
