package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/store"
)

// RunCerts runs the certificate storage contract: open returns two
// handles on one new, empty storage, as two proxies of a cluster have.
func RunCerts(t *testing.T, open func(t *testing.T) (a, b store.Certs)) {
	for _, c := range certCases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			a, b := open(t)
			c.run(t, ctx, a, b)
		})
	}
}

type certCase struct {
	name string
	run  func(t *testing.T, ctx context.Context, a, b store.Certs)
}

var certCases = []certCase{
	{"put, get, replace and delete, seen by the other handle", func(t *testing.T, ctx context.Context, a, b store.Certs) {
		_, err := a.GetCert(ctx, "www.example.com")
		wantErr(t, "get missing", err, store.ErrNotFound)
		v1 := testbed.CertPEM(t, time.Now().Add(time.Hour), "www.example.com")
		if err := a.PutCert(ctx, "www.example.com", v1); err != nil {
			t.Fatal(err)
		}
		got, err := b.GetCert(ctx, "www.example.com")
		if err != nil || !bytes.Equal(got, v1) {
			t.Fatalf("get from the other handle = %d bytes, %v; want what was put", len(got), err)
		}
		v2 := testbed.CertPEM(t, time.Now().Add(2*time.Hour), "www.example.com")
		if err := b.PutCert(ctx, "www.example.com", v2); err != nil {
			t.Fatal(err)
		}
		if got, _ := a.GetCert(ctx, "www.example.com"); !bytes.Equal(got, v2) {
			t.Fatal("put did not replace the data")
		}
		if err := a.DeleteCert(ctx, "www.example.com"); err != nil {
			t.Fatal(err)
		}
		_, err = b.GetCert(ctx, "www.example.com")
		wantErr(t, "get deleted", err, store.ErrNotFound)
		if err := a.DeleteCert(ctx, "www.example.com"); err != nil {
			t.Fatalf("deleting nothing: %v", err)
		}
	}},
	{"every name autocert and wildcards use", func(t *testing.T, ctx context.Context, a, b store.Certs) {
		for _, name := range []string{
			"www.example.com", "www.example.com+rsa", "www.example.com+token", "acme_account+key",
			"Zm9vYmFyLWJhei1xdXV4LXRva2Vu_-+http-01", "*.alice.repl.test", "*.id.repl.test", strings.Repeat("a", 255),
		} {
			if err := a.PutCert(ctx, name, []byte("x")); err != nil {
				t.Errorf("put %q: %v", name, err)
				continue
			}
			if got, err := b.GetCert(ctx, name); err != nil || string(got) != "x" {
				t.Errorf("get %q = %q, %v", name, got, err)
			}
		}
	}},
	{"bad names and data are refused", func(t *testing.T, ctx context.Context, a, b store.Certs) {
		for _, name := range []string{"", ".hidden", "..", "../etc/passwd", "a/b", "a b", "a\x00b", "é.example.com", strings.Repeat("a", 256)} {
			wantErr(t, fmt.Sprintf("put %q", name), a.PutCert(ctx, name, []byte("x")), store.ErrInvalid)
			_, err := a.GetCert(ctx, name)
			wantErr(t, fmt.Sprintf("get %q", name), err, store.ErrInvalid)
			wantErr(t, fmt.Sprintf("delete %q", name), a.DeleteCert(ctx, name), store.ErrInvalid)
			_, err = a.AcquireCertLease(ctx, name, "p1", time.Minute)
			wantErr(t, fmt.Sprintf("lease %q", name), err, store.ErrInvalid)
		}
		wantErr(t, "put empty data", a.PutCert(ctx, "www.example.com", nil), store.ErrInvalid)
		wantErr(t, "put 1 MiB + 1", a.PutCert(ctx, "www.example.com", make([]byte, 1<<20+1)), store.ErrInvalid)
		_, err := a.AcquireCertLease(ctx, "x.example.com", "", time.Minute)
		wantErr(t, "lease without holder", err, store.ErrInvalid)
		_, err = a.AcquireCertLease(ctx, "x.example.com", "p1", 0)
		wantErr(t, "lease without ttl", err, store.ErrInvalid)
		if entries, err := b.ListCerts(ctx); err != nil || len(entries) != 0 {
			t.Fatalf("list after refused writes = %v, %v; want nothing", entries, err)
		}
	}},
	{"list and certificates with names and expiry", func(t *testing.T, ctx context.Context, a, b store.Certs) {
		exp1 := time.Now().Add(60 * 24 * time.Hour).Truncate(time.Second).UTC()
		exp2 := time.Now().Add(30 * 24 * time.Hour).Truncate(time.Second).UTC()
		before := time.Now().Add(-time.Minute)
		for name, data := range map[string][]byte{
			"*.alice.repl.test":     testbed.CertPEM(t, exp1, "*.alice.repl.test"),
			"www.example.com":       testbed.CertPEM(t, exp2, "www.example.com"),
			"www.example.com+token": testbed.CertPEM(t, exp2, "www.example.com"),
			"acme_account+key":      []byte("-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n"),
			"tok+http-01":           []byte("tok.thumbprint"),
		} {
			if err := a.PutCert(ctx, name, data); err != nil {
				t.Fatal(err)
			}
		}
		entries, err := b.ListCerts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name)
			if e.UpdatedAt.Before(before) || e.Size == 0 {
				t.Errorf("entry %+v: want updated now and a size", e)
			}
			switch e.Name {
			case "*.alice.repl.test":
				if !e.NotAfter.Equal(exp1) {
					t.Errorf("%s not after %v, want %v", e.Name, e.NotAfter, exp1)
				}
			case "acme_account+key", "tok+http-01":
				if !e.NotAfter.IsZero() {
					t.Errorf("%s not after %v, want zero (no certificate)", e.Name, e.NotAfter)
				}
			}
		}
		if want := "*.alice.repl.test acme_account+key tok+http-01 www.example.com www.example.com+token"; strings.Join(names, " ") != want {
			t.Fatalf("list = %v, want %s", names, want)
		}
		certs, err := store.ListCertificates(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if len(certs) != 2 || certs[0].Key != "*.alice.repl.test" || certs[1].Key != "www.example.com" {
			t.Fatalf("certificates = %+v, want the wildcard and the domain only", certs)
		}
		if c := certs[0]; strings.Join(c.Names, ",") != "*.alice.repl.test" || !c.NotAfter.Equal(exp1) || c.Issuer != "*.alice.repl.test" { // self-signed
			t.Fatalf("certificate %+v", c)
		}
	}},
	{"one holder at a time, across handles", func(t *testing.T, ctx context.Context, a, b store.Certs) {
		const name = "*.alice.repl.test"
		acquire := func(c store.Certs, holder string, want bool) {
			t.Helper()
			got, err := c.AcquireCertLease(ctx, name, holder, time.Minute)
			if err != nil || got != want {
				t.Fatalf("acquire by %s = %v, %v; want %v", holder, got, err, want)
			}
		}
		acquire(a, "p1", true)
		acquire(b, "p2", false)
		acquire(a, "p1", true) // the holder again: extended
		acquire(b, "p1", true) // the holder is a name, not a handle
		if err := b.ReleaseCertLease(ctx, name, "p2"); err != nil {
			t.Fatal(err)
		}
		acquire(b, "p2", false) // releasing someone else's lease does nothing
		if err := a.ReleaseCertLease(ctx, name, "p1"); err != nil {
			t.Fatal(err)
		}
		acquire(b, "p2", true)
		acquire(a, "p1", false)
		acquire(a, "p1"+"-other-name", false)
		got, err := a.AcquireCertLease(ctx, "*.bob.repl.test", "p1", time.Minute)
		if err != nil || !got {
			t.Fatalf("another name is another lease: %v, %v", got, err)
		}
		if err := a.ReleaseCertLease(ctx, "nothing.example.com", "p1"); err != nil {
			t.Fatalf("release of no lease: %v", err)
		}
	}},
	{"an expired lease is taken over", func(t *testing.T, ctx context.Context, a, b store.Certs) {
		const name = "www.example.com"
		if got, err := a.AcquireCertLease(ctx, name, "p1", 200*time.Millisecond); err != nil || !got {
			t.Fatalf("acquire = %v, %v", got, err)
		}
		start := time.Now()
		for {
			got, err := b.AcquireCertLease(ctx, name, "p2", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if got {
				break
			}
			if time.Since(start) > 10*time.Second {
				t.Fatal("the expired lease was never taken over")
			}
			select {
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
		if since := time.Since(start); since < 150*time.Millisecond {
			t.Fatalf("taken over after %v, before the lease expired", since)
		}
		if got, _ := a.AcquireCertLease(ctx, name, "p1", time.Minute); got {
			t.Fatal("the old holder got the lease back from the new one")
		}
	}},
	{"racing holders: exactly one wins", func(t *testing.T, ctx context.Context, a, b store.Certs) {
		const n = 16
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			wins []string
			errs []error
		)
		for i := range n {
			c := a
			if i%2 == 1 {
				c = b
			}
			holder := fmt.Sprintf("p%d", i)
			wg.Go(func() {
				got, err := c.AcquireCertLease(ctx, "*.race.repl.test", holder, time.Minute)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
				}
				if got {
					wins = append(wins, holder)
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if len(wins) != 1 {
			t.Fatalf("winners %v, want exactly one", wins)
		}
	}},
}
