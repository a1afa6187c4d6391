package replnsd

import (
	"context"
	"errors"
	"flag"
	"io"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	env := map[string]string{
		"REPLNS_ZONE":     "repl.test",
		"REPLNS_REGISTRY": "/etc/clusters.yaml",
		"REPLNS_NS":       "ns1.repl.test=192.0.2.53+2001:db8::53, ns2.example.net",
		"REPLNS_LISTEN":   "127.0.0.1:5353",
		"REPLNS_RRL_RATE": "0",
	}
	o, err := parseFlags([]string{"-listen", "127.0.0.2:53", "-ttl", "30s"}, lookup(env), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.dns.Zone != "repl.test" || o.clusters != "/etc/clusters.yaml" {
		t.Errorf("zone %q clusters %q", o.dns.Zone, o.clusters)
	}
	if o.server.Addr != "127.0.0.2:53" {
		t.Errorf("listen %q: the command line must win over the environment", o.server.Addr)
	}
	if o.dns.TTL.String() != "30s" || o.dns.RRL.Rate != -1 {
		t.Errorf("ttl %v rrl rate %d", o.dns.TTL, o.dns.RRL.Rate)
	}
	if len(o.dns.NameServers) != 2 || len(o.dns.NameServers[0].Addrs) != 2 || o.dns.NameServers[1].Name != "ns2.example.net" {
		t.Errorf("name servers %+v", o.dns.NameServers)
	}

	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "-zone is required"},
		{[]string{"-zone", "repl.test", "-registry", "c.yaml", "-ns", "ns1.repl.test=nope"}, nil, "not an IP address"},
		{[]string{"-zone", "repl.test", "-registry", "c.yaml", "-ns", "a.b"}, map[string]string{"REPLNS_TTL": "soon"}, "REPLNS_TTL"},
		{[]string{"-zone", "repl.test", "-registry", "c.yaml", "-ns", "a.b", "-cookie-secret", "abc"}, nil, "32 hex digits"},
		{[]string{"-zone", "repl.test", "extra"}, nil, "unexpected arguments"},
		{[]string{"-zone", "repl.test", "-registry", "c.yaml", "-ns", "a.b", "-tcp-per-client", "0"}, nil, "-tcp-per-client 0: must be at least 1"},
		{[]string{"-zone", "repl.test", "-registry", "c.yaml", "-ns", "a.b", "-tcp-max-conns", "-1"}, nil, "-tcp-max-conns -1: must be at least 1"},
		{[]string{"-zone", "repl.test", "-registry", "c.yaml", "-ns", "a.b", "-tcp-per-client", "20", "-tcp-max-conns", "10"}, nil,
			"-tcp-per-client 20: must be at most -tcp-max-conns (10)"},
		{[]string{"-zone", "repl.test", "-registry", "c.yaml", "-ns", "a.b", "-tcp-max-lifetime", "0s"}, nil, "-tcp-max-lifetime 0s: must be more than 0"},
		{[]string{"-zone", "repl.test", "-registry", "c.yaml", "-ns", "a.b"}, map[string]string{"REPLNS_TCP_MESSAGE_TIMEOUT": "-1s"},
			"-tcp-message-timeout -1s: must be more than 0"},
		{[]string{"-zone", "repl.test", "-registry", "c.yaml", "-ns", "a.b", "-tcp-idle-timeout", "0"}, nil, "-tcp-idle-timeout 0s: must be more than 0"},
		{[]string{"-zone", "repl.test", "-registry", "c.yaml", "-ns", "a.b", "-tcp-per-client", "many"}, nil, "-tcp-per-client"},
	} {
		_, err := parseFlags(tc.args, lookup(tc.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %v: error %v, want %q", tc.args, tc.env, err, tc.want)
		}
	}
	// An empty variable counts as not set; -1 is off like 0.
	env = map[string]string{"REPLNS_ZONE": "repl.test", "REPLNS_REGISTRY": "c.yaml", "REPLNS_NS": "a.b", "REPLNS_LISTEN": "", "REPLNS_RRL_SLIP": ""}
	o, err = parseFlags([]string{"-rrl-rate", "-1"}, lookup(env), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.server.Addr != ":53" || o.dns.RRL.Rate != -1 || o.dns.RRL.Slip != 2 {
		t.Errorf("listen %q rrl rate %d slip %d: want the defaults, and the rate off", o.server.Addr, o.dns.RRL.Rate, o.dns.RRL.Slip)
	}
	if s := o.server; s.MaxTCPConns != 1000 || s.MaxTCPPerClient != 16 || s.TCPIdleTimeout != 10*time.Second ||
		s.TCPMaxLifetime != 2*time.Minute || s.TCPMessageTimeout != 2*time.Second {
		t.Errorf("TCP settings %d %d %v %v %v: want the defaults", s.MaxTCPConns, s.MaxTCPPerClient, s.TCPIdleTimeout, s.TCPMaxLifetime, s.TCPMessageTimeout)
	}
	o, err = parseFlags([]string{"-tcp-per-client", "4", "-tcp-max-lifetime", "30s"}, lookup(env, map[string]string{"REPLNS_TCP_MESSAGE_TIMEOUT": "500ms"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if s := o.server; s.MaxTCPPerClient != 4 || s.TCPMaxLifetime != 30*time.Second || s.TCPMessageTimeout != 500*time.Millisecond {
		t.Errorf("TCP settings %d %v %v: want 4 30s 500ms", s.MaxTCPPerClient, s.TCPMaxLifetime, s.TCPMessageTimeout)
	}
	if _, err := parseFlags([]string{"-h"}, lookup(nil), io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

// lookup is an Env of the variables in maps, the later ones winning.
func lookup(maps ...map[string]string) Env {
	return func(k string) (string, bool) {
		v, ok := "", false
		for _, m := range maps {
			if mv, in := m[k]; in {
				v, ok = mv, true
			}
		}
		return v, ok
	}
}

// TestMemoryLimit: -memory-limit and -gc-percent are in effect, and
// logged, before the registry is read (here one that is not there), from
// the command line or REPLNS_MEMORY_LIMIT; bad values are refused naming
// the flag.
func TestMemoryLimit(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	base := []string{"-zone", "repl.test", "-registry", filepath.Join(t.TempDir(), "none.yaml"), "-ns", "a.b", "-admin-listen", ""}
	var logs strings.Builder
	if err := Main(context.Background(), append(base, "-gc-percent", "300"), lookup(map[string]string{"REPLNS_MEMORY_LIMIT": "1.5GiB"}), &logs); err == nil {
		t.Fatal("started without a registry")
	}
	if got := debug.SetMemoryLimit(-1); got != 3<<29 {
		t.Errorf("memory limit in effect %d, want 1.5GiB", got)
	}
	if got := debug.SetGCPercent(100); got != 300 {
		t.Errorf("GOGC in effect %d, want 300", got)
	}
	if !strings.Contains(logs.String(), `"memory_limit":"1.5GiB","memory_limit_bytes":1610612736,"memory_limit_from":"-memory-limit 1.5GiB","gc_percent":300`) {
		t.Errorf("start log:\n%s", logs.String())
	}
	for _, bad := range [][]string{{"-memory-limit", "512M"}, {"-memory-limit", "200%"}, {"-memory-limit", "1KiB"}, {"-gc-percent", "-1"}} {
		if _, err := parseFlags(append(append([]string(nil), base...), bad...), lookup(nil), io.Discard); err == nil || !strings.Contains(err.Error(), bad[0]) {
			t.Errorf("%v: %v; want an error naming %s", bad, err, bad[0])
		}
	}
}
