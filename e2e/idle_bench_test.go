package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/platformtest"
)

// BenchmarkIdleCPU measures the CPU an idle replproxy and an idle replns
// burn (their clocks, change-feed polls and probes, pool health checks):
// the binaries on PostgreSQL stores, no request for 20 s, their own
// process_cpu_seconds_total before and after. Run with -benchtime 1x;
// the figures are ms of CPU per second.
func BenchmarkIdleCPU(b *testing.B) {
	p := platformtest.Start(b, platformtest.Options{Mode: platformtest.Binaries, Store: platformtest.Postgres, NoLinks: true})
	p.CreateRepl(b, platformtest.Repl{ID: "idle1", Owner: "idle", Slug: "app", Endpoints: []string{"127.0.0.1:1"}})
	time.Sleep(2 * time.Second) // start-up work done
	admins := map[string]string{"replproxy": p.Cluster(b, "east").AdminAddr, "replns": p.DNSAdmin()}
	const window = 20 * time.Second
	for range b.N {
		before := map[string]float64{}
		for name, addr := range admins {
			before[name] = processCPU(b, addr)
		}
		time.Sleep(window)
		for name, addr := range admins {
			b.ReportMetric((processCPU(b, addr)-before[name])*1000/window.Seconds(), name+"-ms/s")
		}
	}
}

// processCPU scrapes process_cpu_seconds_total from an admin listener.
func processCPU(b *testing.B, addr string) float64 {
	b.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "process_cpu_seconds_total "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			return f
		}
	}
	b.Fatal(fmt.Errorf("no process_cpu_seconds_total at %s", addr))
	return 0
}
