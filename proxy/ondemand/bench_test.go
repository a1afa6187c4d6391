package ondemand_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy/ondemand"
	"github.com/replproxy/replproxy/store"
)

// BenchmarkFirstHandshakePebble measures the time from the first TLS
// handshake for a name without a certificate to the handshake completing
// with a new one, against Pebble (real validation, no random sleeps), on
// PostgreSQL: a DNS-01 order of *.<owner>.repl.test for a new owner each
// time ("wildcard"), or a TLS-ALPN-01 order through autocert for a new
// custom domain ("domain"). Run it with a fixed count: -benchtime 20x.
func BenchmarkFirstHandshakePebble(b *testing.B) {
	srv := pgtest.Start(b)
	e := newTLSEnv(b, tlsEnvOpts{storeAddr: srv.NewDatabase(b)})
	p := e.proxy(b, true, func(o *tlsProxyOpts) {
		o.tweak = func(c *ondemand.Config) { c.OrdersPerHour, c.OrderBurst = 1e6, 1000 }
	})
	for _, kind := range []string{"wildcard", "domain"} {
		b.Run(kind, func(b *testing.B) {
			var took []time.Duration
			i := 0
			for b.Loop() {
				b.StopTimer()
				i++
				id := fmt.Sprintf("%s%d", kind, i)
				testbed.CreateRepl(b, e.st, id, id, "app", e.backend)
				name := "app." + id + ".repl.test"
				if kind == "domain" {
					name = id + ".example.com"
					if _, err := e.st.LinkDomain(b.Context(), store.Domain{Name: name, ReplID: id}); err != nil {
						b.Fatal(err)
					}
					e.dns.SetHost(name, "127.0.0.1")
				}
				b.StartTimer()
				start := time.Now()
				mustHandshake(b, p.HTTPS, name, e.roots)
				took = append(took, time.Since(start))
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[0].Microseconds())/1000, "min-ms")
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "max-ms")
		})
	}
}
