package ondemand

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/replproxy/replproxy/store"
)

// accountKeyName is where autocert keeps the ACME account key; the DNS-01
// orders use the same key, so the cluster has one account.
const accountKeyName = "acme_account+key"

// acmeAccount is the ACME account every proxy of the cluster shares. Its
// key lives in the cluster's certificate storage.
type acmeAccount struct {
	client *acme.Client
	certs  store.Certs
	holder string
	email  string

	mu         sync.Mutex
	registered bool
}

// loadKey reads the account key from the storage, or makes one and stores
// it under the lease of its name, so that proxies starting together agree
// on one key. It must run before autocert first orders: autocert would
// otherwise make the key itself, outside the lease.
func (a *acmeAccount) loadKey(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client.Key != nil {
		return nil
	}
	for {
		data, err := a.certs.GetCert(ctx, accountKeyName)
		if err == nil {
			key, err := parseKeyPEM(data)
			if err != nil {
				return fmt.Errorf("ACME account key %s in the store: %w", accountKeyName, err)
			}
			a.client.Key = key
			return nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("read ACME account key: %w", err)
		}
		got, err := a.certs.AcquireCertLease(ctx, accountKeyName, a.holder, time.Minute)
		if err != nil {
			return fmt.Errorf("make ACME account key: %w", err)
		}
		if got {
			err := a.makeKey(ctx)
			_ = a.certs.ReleaseCertLease(context.WithoutCancel(ctx), accountKeyName, a.holder)
			return err
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("wait for another proxy to make the ACME account key: %w", err)
		}
	}
}

// makeKey stores a new account key unless one appeared meanwhile; the
// caller holds the lease on its name.
func (a *acmeAccount) makeKey(ctx context.Context) error {
	if data, err := a.certs.GetCert(ctx, accountKeyName); err == nil {
		key, err := parseKeyPEM(data)
		if err != nil {
			return fmt.Errorf("ACME account key %s in the store: %w", accountKeyName, err)
		}
		a.client.Key = key
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("make ACME account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("make ACME account key: %w", err)
	}
	if err := a.certs.PutCert(ctx, accountKeyName, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})); err != nil {
		return fmt.Errorf("store ACME account key: %w", err)
	}
	a.client.Key = key
	return nil
}

// register makes sure the account exists at the CA (once per process:
// registering a known key is how ACME finds its account URL).
func (a *acmeAccount) register(ctx context.Context) error {
	if err := a.loadKey(ctx); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.registered {
		return nil
	}
	acct := &acme.Account{}
	if a.email != "" {
		acct.Contact = []string{"mailto:" + a.email}
	}
	if _, err := a.client.Register(ctx, acct, autocert.AcceptTOS); err != nil && !errors.Is(err, acme.ErrAccountAlreadyExists) {
		return fmt.Errorf("register ACME account at %s: %w", a.client.DirectoryURL, err)
	}
	a.registered = true
	return nil
}
