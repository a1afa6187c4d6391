package cli

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseEnv(t *testing.T) {
	type result struct {
		name    string
		ttl     time.Duration
		on      bool
		listen  string
		errText string
	}
	parse := func(args []string, env map[string]string) result {
		var r result
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.StringVar(&r.name, "name", "default", "a name")
		fs.DurationVar(&r.ttl, "ttl", time.Minute, "a TTL")
		fs.BoolVar(&r.on, "on", true, "a switch")
		fs.StringVar(&r.listen, "admin-listen", "127.0.0.1:9090", "an address")
		lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
		if err := ParseEnv(fs, "TEST", args, lookup); err != nil {
			r.errText = err.Error()
		}
		return r
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want result
	}{
		{"defaults", nil, nil, result{name: "default", ttl: time.Minute, on: true, listen: "127.0.0.1:9090"}},
		{"from the environment", nil, map[string]string{"TEST_NAME": "env", "TEST_TTL": "5s", "TEST_ON": "false"},
			result{name: "env", ttl: 5 * time.Second, listen: "127.0.0.1:9090"}},
		{"the command line wins", []string{"-name", "flag"}, map[string]string{"TEST_NAME": "env"},
			result{name: "flag", ttl: time.Minute, on: true, listen: "127.0.0.1:9090"}},
		{"empty counts as not set", nil, map[string]string{"TEST_ADMIN_LISTEN": "", "TEST_ON": ""},
			result{name: "default", ttl: time.Minute, on: true, listen: "127.0.0.1:9090"}},
		{"an empty flag is given", []string{"-admin-listen", ""}, nil,
			result{name: "default", ttl: time.Minute, on: true}},
		{"bad duration", nil, map[string]string{"TEST_TTL": "soon"},
			result{errText: `environment variable TEST_TTL="soon" (flag -ttl): want a duration such as 90s, 5m or 24h`}},
		{"bad bool", nil, map[string]string{"TEST_ON": "maybe"},
			result{errText: `environment variable TEST_ON="maybe" (flag -on): want true or false`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parse(tc.args, tc.env)
			if tc.want.errText != "" {
				got = result{errText: got.errText} // the values are the flag package's after an error
			}
			if got != tc.want {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
	if r := parse([]string{"-name", "x", "extra"}, nil); !strings.Contains(r.errText, `unexpected arguments ["extra"]`) {
		t.Errorf("positional argument: %q", r.errText)
	}
}

func TestUsageListsVariables(t *testing.T) {
	var b bytes.Buffer
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(&b)
	fs.String("hop-secret-file", "", "the secret")
	if err := ParseEnv(fs, "REPLPROXY", []string{"-h"}, func(string) (string, bool) { return "", false }); err != flag.ErrHelp {
		t.Fatalf("-h: %v", err)
	}
	if !strings.Contains(b.String(), "the secret (env REPLPROXY_HOP_SECRET_FILE)") {
		t.Errorf("usage:\n%s", b.String())
	}
	if EnvName("REPLNS_", "rrl-rate") != "REPLNS_RRL_RATE" || EnvName("REPLNS", "rrl-rate") != "REPLNS_RRL_RATE" {
		t.Errorf("EnvName: %s", EnvName("REPLNS_", "rrl-rate"))
	}
}

func TestLogger(t *testing.T) {
	var b bytes.Buffer
	l, err := NewLoggerTo(&b, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("hidden")
	l.Info("shown")
	var line map[string]any
	if err := json.Unmarshal(b.Bytes(), &line); err != nil {
		t.Fatalf("%v: %q", err, b.String())
	}
	ts, _ := line["time"].(string)
	if _, err := time.Parse("2006-01-02T15:04:05.000Z0700", ts); err != nil || line["msg"] != "shown" || line["level"] != "info" {
		t.Errorf("log line %v (time: %v)", line, err)
	}
	for _, bad := range [][2]string{{"loud", "json"}, {"info", "xml"}} {
		if _, err := NewLoggerTo(io.Discard, bad[0], bad[1]); err == nil {
			t.Errorf("level %q format %q: no error", bad[0], bad[1])
		}
	}
}
