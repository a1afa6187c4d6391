package platformtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/replproxy/replproxy/move"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
)

// Repl describes a repl to create.
type Repl struct {
	// ID is the repl's id. Default: "<owner>-<slug>".
	ID          string
	Owner, Slug string
	// Cluster is where it is created. Default: the first cluster.
	Cluster string
	// Endpoints are its container's addresses: an App's Addr.
	Endpoints []string
}

// CreateRepl creates r and returns once its cluster's proxy routes it and
// replns (when there is one) answers its name with that cluster.
func (p *Platform) CreateRepl(t TB, r Repl) store.Repl {
	t.Helper()
	if r.ID == "" {
		r.ID = r.Owner + "-" + r.Slug
	}
	if r.Cluster == "" {
		r.Cluster = p.clusters[0].Name
	}
	c := p.Cluster(t, r.Cluster)
	got, err := c.Store.CreateRepl(context.Background(), store.Repl{ID: r.ID, Owner: r.Owner, Slug: r.Slug, Endpoints: r.Endpoints})
	if err != nil {
		t.Fatalf("platformtest: create repl %s in %s: %v", r.ID, r.Cluster, err)
	}
	host := p.Host(r.Owner, r.Slug)
	p.waitRoute(t, c, host, func(ri proxy.RouteInfo) bool { return ri.Route == "local" })
	if p.dns != nil {
		p.WaitResolves(t, host, r.Cluster)
	}
	return got
}

// Settle waits (up to 10 s each) until the platform agrees that cluster
// hosts host: its proxy serves it, every other proxy forwards it there,
// and replns answers it there. Call it after Move, before asserting where
// requests go: the clusters' proxies learn of a move through their change
// feeds, a moment after Move returns (requests sent meanwhile still work:
// that is what a move guarantees).
func (p *Platform) Settle(t TB, host, cluster string) {
	t.Helper()
	for _, c := range p.clusters {
		if c.Name == cluster {
			p.waitRoute(t, c, host, func(ri proxy.RouteInfo) bool { return ri.Route == "local" })
		} else {
			p.waitRoute(t, c, host, func(ri proxy.RouteInfo) bool { return ri.Route == "tombstone" && ri.Cluster == cluster })
		}
	}
	if p.dns != nil {
		p.WaitResolves(t, host, cluster)
	}
}

// Route asks cluster's proxy where it sends host now (its admin
// /debug/route).
func (p *Platform) Route(t TB, cluster, host string) proxy.RouteInfo {
	t.Helper()
	ri, err := routeOf(p.Cluster(t, cluster), host)
	if err != nil {
		t.Fatalf("platformtest: %v", err)
	}
	return ri
}

func routeOf(c *Cluster, host string) (proxy.RouteInfo, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + c.AdminAddr + "/debug/route?host=" + url.QueryEscape(host))
	if err != nil {
		return proxy.RouteInfo{}, fmt.Errorf("route of %s in %s: %w", host, c.Name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return proxy.RouteInfo{}, fmt.Errorf("route of %s in %s: %s: %s", host, c.Name, resp.Status, strings.TrimSpace(string(body)))
	}
	var ri proxy.RouteInfo
	if err := json.Unmarshal(body, &ri); err != nil {
		return proxy.RouteInfo{}, fmt.Errorf("route of %s in %s: %w", host, c.Name, err)
	}
	return ri, nil
}

// waitRoute waits until c's proxy routes host as ok says.
func (p *Platform) waitRoute(t TB, c *Cluster, host string, ok func(proxy.RouteInfo) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ri, err := routeOf(c, host)
		if err == nil && ok(ri) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("platformtest: %s's proxy still routes %s as %+v after 10 s (%v)", c.Name, host, ri, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// WaitResolves waits (up to 10 s) until replns answers name with
// cluster's address.
func (p *Platform) WaitResolves(t TB, name, cluster string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := p.Resolve(context.Background(), name)
		if err == nil && c.Name == cluster {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("platformtest: replns does not answer %s with %s after 10 s (last: %v, %v)", name, cluster, clusterName(c), err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func clusterName(c *Cluster) string {
	if c == nil {
		return "none"
	}
	return c.Name
}

// Where returns the cluster where the repl is live ("" when none is).
func (p *Platform) Where(t TB, id string) string {
	t.Helper()
	for _, c := range p.clusters {
		_, err := c.Store.GetRepl(context.Background(), id)
		switch {
		case err == nil:
			return c.Name
		case !errors.Is(err, store.ErrNotFound):
			t.Fatalf("platformtest: look for repl %s in %s: %v", id, c.Name, err)
		}
	}
	return ""
}

// DeleteRepl deletes a live repl from the cluster where it is live.
func (p *Platform) DeleteRepl(t TB, id string) {
	t.Helper()
	where := p.Where(t, id)
	if where == "" {
		t.Fatalf("platformtest: delete repl %s: it is live in no cluster", id)
	}
	if err := p.Cluster(t, where).Store.DeleteRepl(context.Background(), id); err != nil {
		t.Fatalf("platformtest: delete repl %s in %s: %v", id, where, err)
	}
}

// SetEndpoints points a live repl at other containers.
func (p *Platform) SetEndpoints(t TB, id string, endpoints ...string) {
	t.Helper()
	where := p.Where(t, id)
	if where == "" {
		t.Fatalf("platformtest: set endpoints of %s: it is live in no cluster", id)
	}
	if _, err := p.Cluster(t, where).Store.SetEndpoints(context.Background(), id, endpoints); err != nil {
		t.Fatalf("platformtest: set endpoints of %s in %s: %v", id, where, err)
	}
}

// LinkDomain links a custom domain to a repl, in the cluster where it is
// live, and returns the link (its Token is what the owner would publish).
func (p *Platform) LinkDomain(t TB, domain, replID string) store.Domain {
	t.Helper()
	where := p.Where(t, replID)
	if where == "" {
		t.Fatalf("platformtest: link %s: repl %s is live in no cluster", domain, replID)
	}
	d, err := p.Cluster(t, where).Store.LinkDomain(context.Background(), store.Domain{Name: domain, ReplID: replID})
	if err != nil {
		t.Fatalf("platformtest: link %s to %s: %v", domain, replID, err)
	}
	return d
}

// VerifyDomain marks a linked domain verified (as the proxies do once its
// owner published the token), in every cluster that links it.
func (p *Platform) VerifyDomain(t TB, domain string) {
	t.Helper()
	n := 0
	for _, c := range p.clusters {
		err := c.Store.MarkDomainVerified(context.Background(), domain, time.Now())
		switch {
		case err == nil:
			n++
		case !errors.Is(err, store.ErrNotFound):
			t.Fatalf("platformtest: verify %s in %s: %v", domain, c.Name, err)
		}
	}
	if n == 0 {
		t.Fatalf("platformtest: verify %s: no cluster links it", domain)
	}
}

// MoveOption changes how Move runs.
type MoveOption func(*moveOptions)

type moveOptions struct {
	stopAfter move.Step
}

// StopAfter stops the move after step s (move.StepActivate, StepRepoint
// or StepRetire), as a crash of replctl there would: Move returns a
// *move.Error, and running Move again finishes it.
func StopAfter(s move.Step) MoveOption { return func(o *moveOptions) { o.stopAfter = s } }

// errStopped is the failure StopAfter injects.
var errStopped = errors.New("platformtest: stopped after the step (StopAfter)")

// Move moves a repl to cluster to, its container there at endpoints, with
// the code `replctl move` runs (package move): claimed, step by step, each
// idempotent. It returns the move's error (a *move.Error says which steps
// were done).
func (p *Platform) Move(ctx context.Context, id, to string, endpoints []string, opts ...MoveOption) error {
	var o moveOptions
	for _, opt := range opts {
		opt(&o)
	}
	stores := map[string]store.Store{}
	for _, c := range p.clusters {
		stores[c.Name] = c.Store
	}
	hooks := move.Hooks{AfterStep: func(_ context.Context, s move.Step) error {
		if o.stopAfter != 0 && s == o.stopAfter {
			return errStopped
		}
		return nil
	}}
	m, err := move.New(p.reg, stores, hooks, nil)
	if err != nil {
		return fmt.Errorf("move %s: %w", id, err)
	}
	_, err = m.Move(ctx, move.Request{Repl: id, To: to, Endpoints: endpoints, Holder: "platformtest"})
	return err
}

// Sleep puts a live repl to sleep, as the platform's container manager does
// with an idle one: its container is gone (its endpoints are cleared) and
// its next request asks for a wake (package wake is the manager's side).
func (p *Platform) Sleep(t TB, id string) {
	t.Helper()
	where := p.Where(t, id)
	if where == "" {
		t.Fatalf("platformtest: sleep %s: it is live in no cluster", id)
	}
	if _, err := p.Cluster(t, where).Store.Sleep(context.Background(), id); err != nil {
		t.Fatalf("platformtest: sleep %s in %s: %v", id, where, err)
	}
}
