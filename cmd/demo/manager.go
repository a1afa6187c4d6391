package main

// A sample container manager, one per cluster, in the demo's process
// (README, "Wake on request"). Package wake does the protocol: it hears of
// a wake a proxy asked for, claims it, and calls start, whose endpoints it
// reports with FinishWake (or its error with FailWake). What a container
// is, and when a repl is idle, is the manager's own business: here a
// container is a sample app's http.Server that takes bootTime to "boot",
// and sleepIdle, every second, puts to sleep a repl that has served no
// request for the idle time (store.Wakes.Activity, which the proxies
// flush every -activity-flush) and stops its app a little later.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/wake"
)

// bootTime is how long a sample container takes to start: long enough
// for the wake to be seen in curl's timing.
const bootTime = time.Second

// drainTime is how long a container of a repl put to sleep keeps running:
// the proxies hear of the sleep through their change feeds, a moment
// later, and until then still send it requests.
const drainTime = 2 * time.Second

// manager starts and stops the sleepy sample apps of one cluster.
type manager struct {
	cluster, ip string
	store       store.Store
	idle        time.Duration
	wakes       *wake.Manager // does the wake protocol; calls start

	mu      sync.Mutex
	running map[string]*container // by repl id
}

// container is a running sample app.
type container struct {
	srv    *http.Server
	since  time.Time // when it started: its repl is not idle before idle has passed since
	stopAt time.Time // its repl is asleep: it stops then (zero: it runs)
}

// newManager makes the manager of a cluster (its address is ip) on the
// cluster's store.
func newManager(cluster, ip string, st store.Store, idle time.Duration) (*manager, error) {
	m := &manager{cluster: cluster, ip: ip, store: st, idle: idle, running: map[string]*container{}}
	var err error
	m.wakes, err = wake.New(st, wake.Config{Name: "demo-manager-" + cluster, Start: m.start}, nil)
	return m, err
}

// run does the wakes and puts idle repls to sleep until ctx is done, then
// stops the apps it started.
func (m *manager) run(ctx context.Context) {
	done := make(chan error, 1)
	go func() { done <- m.wakes.Run(ctx) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			m.sleepIdle(ctx)
		}
	}
	<-done // no start in flight now
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, c := range m.running {
		_ = c.srv.Close()
		delete(m.running, id)
	}
}

// start is the wake.Config's Start: it starts the repl's sample app on its
// port of the cluster's address, after bootTime, and returns that address.
func (m *manager) start(ctx context.Context, w store.Wake) ([]string, error) {
	i := appIndex(w.ReplID)
	if i < 0 || !apps[i].sleepy {
		return nil, fmt.Errorf("the demo has no sleepy sample app for repl %s", w.ReplID)
	}
	a, addr := apps[i], net.JoinHostPort(m.ip, fmt.Sprint(appPort+i))
	m.say("waking %s (%s/%s), asked by %s: starting its app on %s...", a.id, a.owner, a.slug, w.RequestedBy, addr)
	select {
	case <-time.After(bootTime):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.running[a.id]; ok { // asleep, but not stopped yet
		c.since, c.stopAt = time.Now(), time.Time{}
		m.say("%s is awake at %s (its app was still running)", a.id, addr)
		return []string{addr}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		m.say("cannot start the app of %s: %v", a.id, err)
		return nil, fmt.Errorf("the sample app of %s cannot listen: %w", a.id, err)
	}
	srv := &http.Server{Handler: appHandler(a.id, a.owner, a.slug, m.cluster), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	m.running[a.id] = &container{srv: srv, since: time.Now()}
	m.say("%s is awake at %s; it sleeps after %v with no request", a.id, addr, m.idle)
	return []string{addr}, nil
}

// sleepIdle puts to sleep each repl whose app runs and whose last request
// is older than the idle time, and its app stops drainTime later; so does
// the app of a repl put to sleep by hand (replctl repl sleep) or gone.
func (m *manager) sleepIdle(ctx context.Context) {
	last, err := m.store.Activity(ctx)
	if err != nil {
		m.say("read the activity: %v", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, c := range m.running {
		if !c.stopAt.IsZero() {
			if time.Now().After(c.stopAt) {
				delete(m.running, id)
				_ = c.srv.Close()
				m.say("stopped the app of %s", id)
			}
			continue
		}
		r, err := m.store.GetRepl(ctx, id)
		switch {
		case err == nil && r.Asleep:
			if w, err := m.store.GetWake(ctx, id); err == nil && w.Failed == "" {
				continue // being woken: start has returned, FinishWake is on its way
			}
			m.say("%s was put to sleep: its app stops in %v", id, drainTime)
		case errors.Is(err, store.ErrNotFound):
			m.say("%s is gone from %s: its app stops in %v", id, m.cluster, drainTime)
		case err != nil:
			m.say("read repl %s: %v", id, err)
			continue
		default:
			lastUse := c.since
			if t, ok := last[id]; ok && t.After(lastUse) {
				lastUse = t
			}
			if time.Since(lastUse) < m.idle {
				continue
			}
			if _, err := m.store.Sleep(ctx, id); err != nil {
				m.say("put %s to sleep: %v", id, err)
				continue
			}
			m.say("%s had no request for %v: asleep; its app stops in %v", id, m.idle, drainTime)
		}
		c.stopAt = time.Now().Add(drainTime)
	}
}

func (m *manager) say(format string, args ...any) {
	fmt.Printf("%s manager of %s: %s\n", time.Now().Format("15:04:05"), m.cluster, fmt.Sprintf(format, args...))
}

// appIndex returns the index of repl id's sample app, or -1.
func appIndex(id string) int {
	for i, a := range apps {
		if a.id == id {
			return i
		}
	}
	return -1
}
