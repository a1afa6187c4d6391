// Package platformtest starts a whole multi-cluster replproxy platform for
// a test, on loopback: every cluster with its store (embedded, or
// PostgreSQL) and its replproxy, replns over all of them, and the calls a
// platform's own tests need — repls, sample containers, custom domains,
// moves, name resolution through replns, HTTP clients that resolve as a
// browser does — and faults to inject: databases stopped or frozen,
// proxies and replns killed, change feeds cut, links between clusters
// delayed or partitioned.
//
//	func TestDeploy(t *testing.T) {
//		p := platformtest.Start(t, platformtest.Options{})
//		app := p.StartApp(t, "east", platformtest.AppOptions{})
//		p.CreateRepl(t, platformtest.Repl{Owner: "alice", Slug: "blog", Endpoints: []string{app.Addr}})
//		resp, err := p.Client(t).Get("http://" + p.Host("alice", "blog") + "/")
//		...
//	}
//
// The daemons run in the test process (InProcess, the default: fast, and
// seen by the race detector) or as the cmd/ binaries (Binaries), with the
// same flags and the same API. Everything Start starts is stopped and
// removed by the test's cleanups: processes, servers, files, goroutines.
//
// Each cluster has its own loopback address (127.0.0.1, 127.0.0.2, ...):
// its proxy listens there and replns answers it for the repls the
// cluster hosts, as it would answer a cluster's load balancer.
package platformtest
