package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/replproxy/replproxy/internal/acmetest"
	"github.com/replproxy/replproxy/platformtest"
)

// TestReplnsUpgradesUnderDnsperf: replns is replaced 10 times (the new
// process takes over the UDP and TCP sockets through the handover socket;
// the old one answers what it has read and exits) while dnsperf sends
// 2,000 queries/s over UDP and a client asks over TCP, a new connection a
// query: dnsperf loses no query, and every TCP query is answered.
func TestReplnsUpgradesUnderDnsperf(t *testing.T) {
	if testing.Short() {
		t.Skip("15 s of load")
	}
	dnsperf := acmetest.NeedTool(t, "dnsperf", "dnsperf")
	p := startPlatform(t, platformtest.Options{})
	p.createRepl(t)
	host := p.Host("alice", "blog")
	queries := filepath.Join(t.TempDir(), "queries")
	var lines []string
	for range 50 {
		lines = append(lines, host+" A", "blog1.id."+p.Zone().Name()+" A", "nobody.alice."+p.Zone().Name()+" A")
	}
	if err := os.WriteFile(queries, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h, port, _ := net.SplitHostPort(p.DNSAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const seconds = 14
	perf := exec.CommandContext(ctx, dnsperf, "-s", h, "-p", port, "-d", queries, "-l", strconv.Itoa(seconds),
		"-Q", "2000", "-c", "4", "-t", "2")
	var out strings.Builder
	perf.Stdout, perf.Stderr = &out, &out
	if err := perf.Start(); err != nil {
		t.Fatal(err)
	}
	perfDone := make(chan error, 1)
	go func() { perfDone <- perf.Wait() }()

	var tcpSent, tcpFailed atomic.Int64
	var tcpErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		client := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			m := new(dns.Msg)
			m.SetQuestion(dns.Fqdn(host), dns.TypeA)
			tcpSent.Add(1)
			r, _, err := client.ExchangeContext(ctx, m, p.DNSAddr())
			if err == nil && (r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1) {
				err = fmt.Errorf("rcode %s, %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
			}
			if err != nil {
				tcpFailed.Add(1)
				tcpErr.Store(err.Error())
			}
		}
	})

	time.Sleep(time.Second)
	var took []time.Duration
	for range 10 {
		t0 := time.Now()
		p.ReplaceDNS(t)
		took = append(took, time.Since(t0).Round(time.Millisecond))
		time.Sleep(800 * time.Millisecond)
	}
	if err := <-perfDone; err != nil {
		t.Fatalf("dnsperf: %v\n%s", err, out.String())
	}
	close(stop)
	wg.Wait()
	report := out.String()
	sent, lost := dnsperfCount(t, report, "Queries sent"), dnsperfCount(t, report, "Queries lost")
	t.Logf("dnsperf over UDP: %d queries sent, %d lost across 10 replns upgrades (each ready after %v); TCP: %d queries, %d failed",
		sent, lost, took, tcpSent.Load(), tcpFailed.Load())
	if sent < 1000*seconds {
		t.Fatalf("dnsperf sent only %d queries in %d s:\n%s", sent, seconds, report)
	}
	if lost != 0 {
		t.Errorf("dnsperf lost %d of %d queries across the upgrades (%.1f per upgrade):\n%s", lost, sent, float64(lost)/10, report)
	}
	if tcpFailed.Load() != 0 {
		t.Errorf("%d of %d TCP queries failed across the upgrades, e.g. %v", tcpFailed.Load(), tcpSent.Load(), tcpErr.Load())
	}
}

// dnsperfCount reads a count from dnsperf's report ("  Queries lost:  3 (0.00%)").
func dnsperfCount(t *testing.T, report, what string) int {
	t.Helper()
	m := regexp.MustCompile(what + `:\s+(\d+)`).FindStringSubmatch(report)
	if m == nil {
		t.Fatalf("no %q in dnsperf's report:\n%s", what, report)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
