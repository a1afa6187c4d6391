package platformtest

import (
	"context"
	"slices"
	"time"

	"github.com/replproxy/replproxy/internal/pgtest"
)

// Faults. Each fails t with what to do when the platform cannot inject it
// (a database fault without a throw-away PostgreSQL server, say).

// StopDatabase stops cluster's PostgreSQL server (a fast shutdown: its
// connections close); RestartDatabase starts it again on the same port
// with the same data. They need Store: Postgres without PostgresURL.
func (p *Platform) StopDatabase(t TB, cluster string) { p.server(t, cluster, "StopDatabase").Stop(t) }

// RestartDatabase starts a database StopDatabase stopped.
func (p *Platform) RestartDatabase(t TB, cluster string) {
	p.server(t, cluster, "RestartDatabase").Restart(t)
}

// PauseDatabase freezes cluster's PostgreSQL server and its backends
// (SIGSTOP): connections stay open and nothing answers, as when the
// database's host hangs. ResumeDatabase undoes it (cleanup does too).
func (p *Platform) PauseDatabase(t TB, cluster string) {
	p.server(t, cluster, "PauseDatabase").Pause(t)
}

// ResumeDatabase lets a paused database run again.
func (p *Platform) ResumeDatabase(t TB, cluster string) {
	p.server(t, cluster, "ResumeDatabase").Resume(t)
}

// DatabaseLog returns the path of cluster's PostgreSQL server log, or ""
// when the cluster has no server of its own (Store Embedded, PostgresURL,
// or pgtest's EnvURL). The server appends to it, each backend writing its
// own lines: a backend's line is there before the backend exits.
func (p *Platform) DatabaseLog(t TB, cluster string) string {
	t.Helper()
	if c := p.Cluster(t, cluster); c.pg != nil {
		return c.pg.LogPath()
	}
	return ""
}

func (p *Platform) server(t TB, cluster, what string) *pgtest.Server {
	t.Helper()
	c := p.Cluster(t, cluster)
	if c.pg == nil {
		t.Fatalf("platformtest: %s needs the cluster's own PostgreSQL server: start the platform with Store: platformtest.Postgres and no PostgresURL", what)
	}
	return c.pg
}

// CutFeed ends the LISTEN connections of cluster's database: the change
// feeds' wake-ups of its proxy and of replns. They reconnect by themselves
// (with backoff) and resume from their position in the change log, with
// no rebuild; changes made meanwhile reach them then. It
// returns how many connections it ended, and needs Store: Postgres.
func (p *Platform) CutFeed(t TB, cluster string) int {
	t.Helper()
	c := p.Cluster(t, cluster)
	if p.opts.Store != Postgres {
		t.Fatalf("platformtest: CutFeed needs Store: platformtest.Postgres (an embedded store's feed is a file watch)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := cutFeed(ctx, c.StoreAddr)
	if err != nil {
		t.Fatalf("platformtest: cut the change feed of %s: %v", cluster, err)
	}
	return n
}

// StopProxy stops cluster's proxy gracefully (SIGTERM: it finishes the
// requests in flight); RestartProxy starts it again with the same flags.
func (p *Platform) StopProxy(t TB, cluster string) {
	t.Helper()
	if err := p.Cluster(t, cluster).proxy.stop(); err != nil {
		t.Fatalf("platformtest: stop the proxy of %s: %v", cluster, err)
	}
}

// KillProxy stops cluster's proxy at once: SIGKILL with Mode Binaries. In
// process a goroutine cannot be killed: its listeners close at once, and
// the requests in flight get its shutdown timeout (5 s).
func (p *Platform) KillProxy(t TB, cluster string) {
	t.Helper()
	if err := p.Cluster(t, cluster).proxy.kill(); err != nil {
		t.Fatalf("platformtest: kill the proxy of %s: %v", cluster, err)
	}
}

// RestartProxy (re)starts cluster's proxy, stopping it first if it runs,
// and waits until it is ready.
func (p *Platform) RestartProxy(t TB, cluster string) {
	t.Helper()
	p.Cluster(t, cluster).proxy.restart(t)
}

// ReplaceProxy replaces cluster's proxy with a new process (or, in
// process, a new instance) as an upgrade does, with no connection refused
// or reset: the new one starts with the same flags, its handover socket
// included, but a fresh admin address; it takes over the old one's
// listening sockets and, once it is ready, the old one drains and exits by
// itself (its WebSockets get its -shutdown-timeout). ReplaceProxy returns
// when the new one is ready and serving; the old one must have exited
// cleanly by the test's end, or t fails then. The cluster's AdminAddr is
// the new one's from then on, and Logs has the new one's lines only.
func (p *Platform) ReplaceProxy(t TB, cluster string) {
	t.Helper()
	c := p.Cluster(t, cluster)
	admin := addrOn(t, c.IP, 0)
	c.proxy = p.replace(t, c.proxy, admin, "http://"+admin+"/readyz")
	c.AdminAddr = admin
}

// ReplaceDNS replaces replns as ReplaceProxy does its proxy: a new
// process (or instance) with the same flags but a fresh admin address
// takes over the old one's sockets once its clusters are ready, and the
// old one finishes the queries it has read and exits; no query is lost.
// DNSAdmin is the new one's from then on.
func (p *Platform) ReplaceDNS(t TB) {
	t.Helper()
	admin := addrOn(t, "127.0.0.1", 0)
	p.dns = p.replace(t, p.needDNS(t), admin, "http://"+admin+"/readyz?all=1")
}

// replace starts old's successor, with old's flags but admin as its admin
// address, and returns it once it is ready. With a handover socket among
// the flags the successor takes old's sockets and old drains and exits by
// itself, which t's cleanup checks; without one (flags of the test's own)
// old is stopped here.
func (p *Platform) replace(t TB, old *daemon, admin, readyURL string) *daemon {
	t.Helper()
	args := slices.Clone(old.args)
	for i := range len(args) - 1 {
		if args[i] == "-admin-listen" {
			args[i+1] = admin
		}
	}
	next := p.newDaemon(t, old.kind, old.name, args, readyURL)
	next.addr, next.admin = old.addr, admin
	next.start(t)
	next.waitReady(t)
	if !slices.Contains(args, "-handover-socket") {
		if err := old.stop(); err != nil {
			t.Fatalf("platformtest: stop the replaced %s: %v", old.name, err)
		}
		return next
	}
	t.Cleanup(func() {
		if err := old.waitExit(30 * time.Second); err != nil {
			t.Fatalf("platformtest: the replaced %s: %v", old.name, err)
		}
	})
	return next
}

// StopDNS, KillDNS and RestartDNS do the same for replns.
func (p *Platform) StopDNS(t TB) {
	t.Helper()
	if err := p.needDNS(t).stop(); err != nil {
		t.Fatalf("platformtest: stop replns: %v", err)
	}
}

// KillDNS stops replns at once (see KillProxy).
func (p *Platform) KillDNS(t TB) {
	t.Helper()
	if err := p.needDNS(t).kill(); err != nil {
		t.Fatalf("platformtest: kill replns: %v", err)
	}
}

// RestartDNS (re)starts replns and waits until every cluster is ready in
// it.
func (p *Platform) RestartDNS(t TB) {
	t.Helper()
	p.needDNS(t).restart(t)
}

func (p *Platform) needDNS(t TB) *daemon {
	t.Helper()
	if p.dns == nil {
		t.Fatalf("platformtest: the platform has no replns (Options.NoDNS)")
	}
	return p.dns
}

// Logs returns what cluster's proxy has logged (the last MiB of it).
func (p *Platform) Logs(t TB, cluster string) string {
	t.Helper()
	return p.Cluster(t, cluster).proxy.logs.String()
}

// DNSLogs returns what replns has logged (the last MiB of it).
func (p *Platform) DNSLogs(t TB) string {
	t.Helper()
	return p.needDNS(t).logs.String()
}

// AddProxy starts one more proxy for cluster, beside the one Start
// started, as a cluster with several proxies behind its load balancer has:
// the same store, registry and flags, its own HTTP, forward and admin
// addresses. It returns its HTTP and admin addresses; it stops at cleanup.
func (p *Platform) AddProxy(t TB, cluster string) (addr, admin string) {
	t.Helper()
	c := p.Cluster(t, cluster)
	listen, fwd := addrOn(t, c.IP, 0), addrOn(t, c.IP, 0)
	admin = addrOn(t, c.IP, 0)
	args := slices.Clone(c.proxy.args)
	for i := range len(args) - 1 {
		switch args[i] {
		case "-handover-socket":
			args[i+1] = p.handoverSocket(t, cluster)
		case "-listen":
			args[i+1] = listen
		case "-forward-listen":
			args[i+1] = fwd
		case "-admin-listen":
			args[i+1] = admin
		case "-listen-tls":
			args[i+1] = addrOn(t, c.IP, 0)
		}
	}
	d := p.newDaemon(t, c.proxy.kind, c.proxy.name+" (2)", args, "http://"+admin+"/readyz")
	d.start(t)
	d.waitReady(t)
	return listen, admin
}
