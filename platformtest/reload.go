package platformtest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ReloadProxy reloads cluster's proxy configuration as SIGHUP does (with
// Mode Binaries it is SIGHUP; in-process, the daemon's reload hook, so
// that the other daemons of the test process do not reload too) and
// waits until the proxy has reloaded, or refused to. It returns nil when
// the reload was applied, and the reason the proxy logged when it was
// refused (the configuration in use then keeps serving). It fails t when
// the proxy does not answer.
func (p *Platform) ReloadProxy(t TB, cluster string) error {
	t.Helper()
	return p.Cluster(t, cluster).proxy.reloadConfig(t, "replproxy")
}

// ReloadDNS does the same for replns.
func (p *Platform) ReloadDNS(t TB) error {
	t.Helper()
	return p.needDNS(t).reloadConfig(t, "replns")
}

// WriteProxyRegistry rewrites the registry file cluster's proxy reads so
// that it lists only the named clusters (in the platform's order, with
// the addresses the platform gave them), for tests of a cluster joining
// or leaving; ReloadProxy makes the proxy read it. With NoLinks every
// proxy and replns share one file (WriteDNSRegistry's).
func (p *Platform) WriteProxyRegistry(t TB, cluster string, clusters ...string) {
	t.Helper()
	from := p.Cluster(t, cluster)
	p.writeSomeClusters(t, from.registry, clusters, func(c *Cluster) string {
		if link := p.links[[2]string{from.Name, c.Name}]; link != nil {
			return link.Addr()
		}
		return c.ForwardAddr
	})
}

// WriteDNSRegistry rewrites the registry file replns reads (Registry) so
// that it lists only the named clusters; ReloadDNS makes replns read it.
// Move keeps the registry the platform started with.
func (p *Platform) WriteDNSRegistry(t TB, clusters ...string) {
	t.Helper()
	p.writeSomeClusters(t, p.registry, clusters, func(c *Cluster) string { return c.ForwardAddr })
}

func (p *Platform) writeSomeClusters(t TB, path string, names []string, forward func(*Cluster) string) {
	t.Helper()
	for _, name := range names {
		p.Cluster(t, name) // fails t for a name the platform does not have
	}
	var b strings.Builder
	b.WriteString("clusters:\n")
	for _, c := range p.clusters {
		if slices.Contains(names, c.Name) {
			fmt.Fprintf(&b, "  - {name: %s, proxy_ipv4: [%s], forward: %q, store: %q}\n", c.Name, c.IP, forward(c), c.StoreAddr)
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatalf("platformtest: write %s: %v", path, err)
	}
}

// reloadConfig triggers a reload of d and waits for its metrics
// (<prefix>_reload_total) to count it.
func (d *daemon) reloadConfig(t TB, prefix string) error {
	t.Helper()
	metrics, err := url.Parse(d.readyURL)
	if err != nil {
		t.Fatalf("platformtest: %s: %v", d.name, err)
	}
	metrics.Path, metrics.RawQuery = "/metrics", ""
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	okBefore, errBefore := reloadCounts(t, client, metrics.String(), prefix, d.name)

	d.mu.Lock()
	switch {
	case !d.running:
		d.mu.Unlock()
		t.Fatalf("platformtest: reload %s: it is not running", d.name)
	case d.mode == InProcess:
		select {
		case d.reload <- struct{}{}: // taken at once, or after the one pending
		case <-d.done:
			d.mu.Unlock()
			t.Fatalf("platformtest: reload %s: it exited: %v\n%s", d.name, d.err, d.logs.tail(20))
		}
	default:
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			d.mu.Unlock()
			t.Fatalf("platformtest: SIGHUP to %s: %v", d.name, err)
		}
	}
	d.mu.Unlock()

	deadline := time.Now().Add(d.timeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		ok, failed := reloadCounts(t, client, metrics.String(), prefix, d.name)
		switch {
		case ok > okBefore:
			return nil
		case failed > errBefore:
			return errors.New(lastRefusal(d.logs.String()))
		case time.Now().After(deadline):
			t.Fatalf("platformtest: %s did not reload within %v of the signal\n%s", d.name, d.timeout, d.logs.tail(20))
		}
		time.Sleep(delay)
	}
}

// reloadCounts reads <prefix>_reload_total{result="ok"} and {result="error"}.
func reloadCounts(t TB, client *http.Client, metricsURL, prefix, name string) (ok, failed float64) {
	t.Helper()
	resp, err := client.Get(metricsURL)
	if err != nil {
		t.Fatalf("platformtest: metrics of %s: %v", name, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for label, n := range map[string]*float64{`{result="ok"} `: &ok, `{result="error"} `: &failed} {
			if v, found := strings.CutPrefix(line, prefix+"_reload_total"+label); found {
				*n, _ = strconv.ParseFloat(v, 64)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("platformtest: metrics of %s: %v", name, err)
	}
	return ok, failed
}

// lastRefusal is the reason of the last "reload refused" line in a
// daemon's log.
func lastRefusal(logs string) string {
	lines := strings.Split(logs, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.Contains(lines[i], "reload refused") {
			continue
		}
		var entry struct {
			Error string `json:"error"`
		}
		if json.Unmarshal([]byte(lines[i]), &entry) == nil && entry.Error != "" {
			return entry.Error
		}
		return lines[i]
	}
	return "reload refused (no reason in the log)"
}
