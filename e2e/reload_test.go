package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/miekg/dns"

	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/platformtest"
)

// TestReloadKeepsServing runs the binaries and reloads them with SIGHUP:
// east's proxy and replns learn of a third cluster from the registry (a
// repl moved there is served through east's tombstone, and replns answers
// it), east's proxy takes a new TLS certificate, replns a new zone file
// (apex TXT, NS set, SOA serial); a registry and a zone file that do not
// load are refused with their reason and change nothing; and a WebSocket
// opened through east's proxy before all this keeps working throughout.
func TestReloadKeepsServing(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _ := testbed.SelfSigned(t, "blog.alice.repl.test")
	zoneFile := filepath.Join(dir, "zone.yaml")
	writeFile(t, zoneFile, "txt: [\"before\"]\n")
	tlsAddr := platformtest.FreeAddr(t, "127.0.0.1") // east's IP
	p := start(t, platformtest.Options{
		Clusters:          []string{"east", "west", "north"},
		ClusterProxyFlags: map[string][]string{"east": {"-listen-tls", tlsAddr, "-tls-cert", certFile, "-tls-key", keyFile}},
		DNSFlags:          []string{"-zone-file", zoneFile},
	})
	eastApp := p.StartApp(t, "east", platformtest.AppOptions{})
	northApp := p.StartApp(t, "north", platformtest.AppOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// North has not joined the platform yet, as east's proxy and replns
	// see it: the one registry file every binary reads (NoLinks) lists
	// east and west. North's proxy keeps the registry it started with.
	p.WriteDNSRegistry(t, "east", "west")
	mustReload(t, "east's proxy", p.ReloadProxy(t, "east"))
	mustReload(t, "replns", p.ReloadDNS(t))

	p.CreateRepl(t, platformtest.Repl{ID: "chat1", Owner: "alice", Slug: "chat", Cluster: "east", Endpoints: []string{eastApp.Addr}})
	p.CreateRepl(t, platformtest.Repl{ID: "blog1", Owner: "alice", Slug: "blog", Cluster: "east", Endpoints: []string{eastApp.Addr}})
	east := p.Cluster(t, "east")
	ws, _, err := websocket.Dial(ctx, "ws://"+east.ProxyAddr+"/ws", &websocket.DialOptions{Host: p.Host("alice", "chat")})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	echo := func(when string) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, []byte(when)); err != nil {
			t.Fatalf("the WebSocket %s: %v", when, err)
		}
		if _, got, err := ws.Read(ctx); err != nil || string(got) != "east: "+when {
			t.Fatalf("the WebSocket %s: %q, %v", when, got, err)
		}
	}
	echo("before the reloads")
	firstCert := handshake(t, tlsAddr)
	if !bytes.Equal(firstCert, pemDER(t, certFile)) {
		t.Fatal("east's HTTPS listener does not serve -tls-cert")
	}
	serialBefore := soaSerial(t, p.DNSAddr())

	// The repl moves to north: east's tombstone names a cluster east's
	// proxy does not know, 502.
	if err := p.Move(ctx, "blog1", "north", []string{northApp.Addr}); err != nil {
		t.Fatal(err)
	}
	viaEast := p.StaleClient(t, "east")
	get := func() (int, string) {
		t.Helper()
		resp, err := viaEast.Get("http://" + p.Host("alice", "blog") + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	waitUntil(t, "east's proxy meets the tombstone", func() bool { code, _ := get(); return code == http.StatusBadGateway })
	echo("after the move")

	// A registry that does not parse, a zone file with a bad line: refused,
	// and what was in use keeps serving.
	writeFile(t, p.Registry(), "clusters:\n  - {name: east\n")
	if err := p.ReloadProxy(t, "east"); err == nil || !strings.Contains(err.Error(), p.Registry()) {
		t.Fatalf("a registry that does not parse: %v, want a refusal naming the file", err)
	}
	writeFile(t, zoneFile, "txt: [\"after\"]\nns:\n  - {name: ns1.repl.test}\n")
	if err := p.ReloadDNS(t); err == nil || !strings.Contains(err.Error(), "zone.yaml:3: ns[0]") {
		t.Fatalf("a zone file with a bad line: %v, want a refusal naming its line", err)
	}
	if got := apexTXT(t, p.DNSAddr()); got != "before" {
		t.Fatalf("apex TXT after the refused zone file: %q, want the one in use", got)
	}
	if code, _ := get(); code != http.StatusBadGateway {
		t.Fatalf("after the refused registry: %d, want the registry in use (502)", code)
	}
	echo("after the refused reloads")

	// North joins; east gets a new certificate; the zone file a new TXT and
	// its own NS set. One SIGHUP each.
	p.WriteDNSRegistry(t, "east", "west", "north")
	newCert, newKey, _ := testbed.SelfSigned(t, "blog.alice.repl.test")
	copyFile(t, newKey, keyFile)
	copyFile(t, newCert, certFile)
	writeFile(t, zoneFile, "txt: [\"after\"]\nns:\n  - {name: ns1.repl.test, glue: [127.0.0.1]}\n  - {name: ns2.repl.test, glue: [127.0.0.2]}\n")
	mustReload(t, "east's proxy", p.ReloadProxy(t, "east"))
	mustReload(t, "replns", p.ReloadDNS(t))

	if code, body := get(); code != http.StatusOK || !strings.Contains(body, "served in north") {
		t.Fatalf("through east's tombstone after north joined: %d %q, want north's container", code, body)
	}
	if got := handshake(t, tlsAddr); !bytes.Equal(got, pemDER(t, newCert)) {
		t.Fatal("a new TLS handshake after the reload does not get the new certificate")
	}
	if got := apexTXT(t, p.DNSAddr()); got != "after" {
		t.Errorf("apex TXT after the reload: %q", got)
	}
	if got := apexNS(t, p.DNSAddr()); !slices.Equal(got, []string{"ns1.repl.test.", "ns2.repl.test."}) {
		t.Errorf("NS after the reload: %v, want the zone file's", got)
	}
	if s := soaSerial(t, p.DNSAddr()); s <= serialBefore {
		t.Errorf("SOA serial %d after the apex records changed, was %d", s, serialBefore)
	}
	waitUntil(t, "replns answers north for the moved repl", func() bool {
		c, err := p.Resolve(ctx, p.Host("alice", "blog"))
		return err == nil && c.Name == "north"
	})
	echo("after the reloads")
}

func mustReload(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("reload %s: %v", what, err)
	}
}

// waitUntil polls ok every 20 ms, failing t after 10 s (a bound on a
// change the daemons see within milliseconds, not a measurement).
func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	testbed.WaitFor(t, 10*time.Second, what, ok)
}

// handshake makes a new TLS connection and returns the certificate the
// server sent.
func handshake(t *testing.T, addr string) []byte {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: "blog.alice.repl.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Raw
}

func pemDER(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM", path)
	}
	return b.Bytes
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func dnsAsk(t *testing.T, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	r, _, err := c.Exchange(new(dns.Msg).SetQuestion(name, qtype), addr)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func soaSerial(t *testing.T, addr string) uint32 {
	t.Helper()
	r := dnsAsk(t, addr, "repl.test.", dns.TypeSOA)
	if len(r.Answer) != 1 {
		t.Fatalf("SOA: %v", r)
	}
	return r.Answer[0].(*dns.SOA).Serial
}

func apexTXT(t *testing.T, addr string) string {
	t.Helper()
	var out []string
	for _, rr := range dnsAsk(t, addr, "repl.test.", dns.TypeTXT).Answer {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return strings.Join(out, "|")
}

func apexNS(t *testing.T, addr string) []string {
	t.Helper()
	var out []string
	for _, rr := range dnsAsk(t, addr, "repl.test.", dns.TypeNS).Answer {
		out = append(out, rr.(*dns.NS).Ns)
	}
	return out
}
