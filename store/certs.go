package store

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Certs is the certificate storage that one cluster's proxies share: the
// ACME account key, the certificates issued on demand with their private
// keys, and autocert's short-lived challenge answers, each a blob under a
// name (CheckCertName), as golang.org/x/crypto/acme/autocert.Cache wants
// them. A lease per name lets one proxy at a time order a certificate.
//
// Both backends implement it: use CertsOf to get it from a Store.
type Certs interface {
	// GetCert returns the data stored under name; ErrNotFound when none.
	GetCert(ctx context.Context, name string) ([]byte, error)
	// PutCert stores data under name, replacing what was there. When data
	// holds a PEM certificate its expiry is recorded for ListCerts.
	PutCert(ctx context.Context, name string, data []byte) error
	// DeleteCert removes what is stored under name; removing nothing is
	// not an error.
	DeleteCert(ctx context.Context, name string) error
	// ListCerts lists what is stored, ordered by name, without the data.
	ListCerts(ctx context.Context) ([]CertEntry, error)

	// AcquireCertLease takes the lease on name for holder until ttl has
	// passed or holder releases it, and reports whether it did: false when
	// another holder has an unexpired lease. A holder that has the lease
	// already gets it again, with the new ttl. Leases are independent of
	// what is stored.
	AcquireCertLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
	// ReleaseCertLease gives up holder's lease on name; it does nothing
	// when holder does not have it.
	ReleaseCertLease(ctx context.Context, name, holder string) error
}

// CertsOf returns the certificate storage of a store that has one (both
// backends do).
func CertsOf(s Store) (Certs, bool) {
	c, ok := s.(Certs)
	return c, ok
}

// CertEntry describes one stored blob.
type CertEntry struct {
	Name string
	// NotAfter is the expiry of the certificate the data holds, zero when
	// it holds none (an account key, a challenge answer).
	NotAfter  time.Time
	UpdatedAt time.Time
	Size      int // bytes of data
}

// Limits on what Certs stores.
const (
	maxCertNameLen = 255
	maxCertData    = 1 << 20
	maxHolderLen   = 200
)

// CheckCertName checks a name under which Certs stores data: 1–255 of
// A–Z a–z 0–9 . _ * + -, not starting with a dot. That admits every name
// autocert uses ("www.example.com", "www.example.com+token",
// "<token>+http-01", "acme_account+key") and wildcards ("*.alice.repl.co"),
// and makes every name a safe file name.
func CheckCertName(name string) error {
	if name == "" || len(name) > maxCertNameLen {
		return fmt.Errorf("certificate name %q: %w: must be 1 to %d characters", clip(name, 64), ErrInvalid, maxCertNameLen)
	}
	if name[0] == '.' {
		return fmt.Errorf("certificate name %q: %w: must not start with a dot", name, ErrInvalid)
	}
	for i := 0; i < len(name); i++ {
		switch b := name[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		case b == '.', b == '_', b == '*', b == '+', b == '-':
		default:
			return fmt.Errorf("certificate name %q: %w: only A-Z a-z 0-9 . _ * + - are allowed", name, ErrInvalid)
		}
	}
	return nil
}

// CheckCertData checks what PutCert is given: a valid name and at most
// 1 MiB of data.
func CheckCertData(name string, data []byte) error {
	if len(data) == 0 || len(data) > maxCertData {
		return fmt.Errorf("certificate %s: %w: data must be 1 byte to 1 MiB", name, ErrInvalid)
	}
	return nil
}

// CheckLease checks what AcquireCertLease is given: a valid name, a
// holder of 1–200 characters and a positive ttl.
func CheckLease(name, holder string, ttl time.Duration) error {
	if err := CheckCertName(name); err != nil {
		return err
	}
	if holder == "" || len(holder) > maxHolderLen {
		return fmt.Errorf("lease on %s: %w: holder must be 1 to %d characters", name, ErrInvalid, maxHolderLen)
	}
	if ttl <= 0 {
		return fmt.Errorf("lease on %s: %w: ttl must be positive", name, ErrInvalid)
	}
	return nil
}

// CertNotAfter returns the expiry of the first certificate in PEM data,
// or the zero time when there is none.
func CertNotAfter(data []byte) time.Time {
	leaf, err := leafOf(data)
	if err != nil {
		return time.Time{}
	}
	return leaf.NotAfter
}

// errNoCertificate: the data holds no PEM certificate.
var errNoCertificate = errors.New("no PEM certificate")

// leafOf parses the first CERTIFICATE block of PEM data, skipping others
// (a private key comes first in autocert's format).
func leafOf(data []byte) (*x509.Certificate, error) {
	for len(data) > 0 {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
	return nil, errNoCertificate
}

// Certificate is one certificate in a cluster's storage, as
// `replctl certs list` shows it.
type Certificate struct {
	Key       string   // the storage name, e.g. "*.alice.repl.co" or "www.example.com"
	Names     []string // the DNS names the certificate is valid for
	Issuer    string   // the issuer's common name
	NotBefore time.Time
	NotAfter  time.Time
	UpdatedAt time.Time // when it was stored
}

// ListCertificates returns the certificates stored in c, ordered by key,
// skipping what holds no certificate (the account key, challenge answers,
// autocert's "+token" certificates). It reads each certificate: it is for
// operators, not for a request path.
func ListCertificates(ctx context.Context, c Certs) ([]Certificate, error) {
	entries, err := c.ListCerts(ctx)
	if err != nil {
		return nil, err
	}
	var out []Certificate
	for _, e := range entries {
		if e.NotAfter.IsZero() || strings.HasSuffix(e.Name, "+token") {
			continue
		}
		data, err := c.GetCert(ctx, e.Name)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		leaf, err := leafOf(data)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", e.Name, err)
		}
		out = append(out, Certificate{
			Key:       e.Name,
			Names:     slices.Clone(leaf.DNSNames),
			Issuer:    leaf.Issuer.CommonName,
			NotBefore: leaf.NotBefore,
			NotAfter:  leaf.NotAfter,
			UpdatedAt: e.UpdatedAt,
		})
	}
	return out, nil
}
