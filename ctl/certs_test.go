package ctl_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/store"
)

func TestCertsList(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		f := newFleet(t, backend, "east", "west")
		f.ok(t, "migrate", "--all")
		ctx := context.Background()
		notAfter := time.Now().Add(60 * 24 * time.Hour).Truncate(time.Second)
		st, err := cluster.Open(ctx, f.stores["east"], cluster.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		certs, ok := store.CertsOf(st)
		if !ok {
			t.Fatalf("the %s store keeps no certificates", backend)
		}
		if err := certs.PutCert(ctx, "*.alice.repl.test", testbed.CertPEM(t, notAfter, "*.alice.repl.test")); err != nil {
			t.Fatal(err)
		}
		r := f.ok(t, "certs", "list")
		if !strings.Contains(r.stdout, "*.alice.repl.test") || !strings.Contains(r.stdout, "east") {
			t.Fatalf("table does not show the certificate:\n%v", r)
		}
		list := jsonOf[[]struct {
			Cluster  string    `json:"cluster"`
			Key      string    `json:"key"`
			Names    []string  `json:"names"`
			NotAfter time.Time `json:"not_after"`
		}](t, f, "certs", "list")
		if len(list) != 1 || list[0].Cluster != "east" || list[0].Key != "*.alice.repl.test" ||
			len(list[0].Names) != 1 || !list[0].NotAfter.Equal(notAfter) {
			t.Fatalf("certs list = %+v", list)
		}
		if got := jsonOf[[]any](t, f, "certs", "list", "--cluster", "west"); len(got) != 0 {
			t.Fatalf("west lists %v, want nothing", got)
		}
	})
}
