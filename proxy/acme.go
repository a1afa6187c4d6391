package proxy

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
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

// orderGate is the ACME client's transport. Every new order passes
// through it — autocert's background renewals too, which nothing else sees
// before they reach the CA — and it lets one through only when admit
// agrees: the names are ours to order, the overall rate allows one more,
// and this proxy holds the cluster's lease on each name.
type orderGate struct {
	next  http.RoundTripper
	admit func(ctx context.Context, names []string) error

	mu     sync.Mutex
	closed bool
}

var errStopped = errors.New("the certificate manager has stopped")

// RoundTrip implements http.RoundTripper.
func (g *orderGate) RoundTrip(req *http.Request) (*http.Response, error) {
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed {
		closeBody(req)
		return nil, errStopped
	}
	if req.Method == http.MethodPost && req.GetBody != nil {
		names, err := orderNames(req)
		if err == nil && names != nil {
			err = g.admit(req.Context(), names)
		}
		if err != nil {
			closeBody(req)
			return nil, err
		}
	}
	return g.next.RoundTrip(req)
}

// close makes every later request fail at once, so that nothing autocert
// starts after shutdown (it deactivates authorizations in goroutines of its
// own) opens connections.
func (g *orderGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// orderNames returns the identifiers of a newOrder request (RFC 8555,
// section 7.4), and nil for every other request: a JWS whose payload has
// "identifiers".
func orderNames(req *http.Request) ([]string, error) {
	body, err := req.GetBody()
	if err != nil {
		return nil, fmt.Errorf("read ACME request: %w", err)
	}
	defer body.Close()
	raw, err := io.ReadAll(io.LimitReader(body, 1<<16))
	if err != nil {
		return nil, fmt.Errorf("read ACME request: %w", err)
	}
	var jws struct {
		Payload string `json:"payload"`
	}
	if json.Unmarshal(raw, &jws) != nil || jws.Payload == "" {
		return nil, nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		return nil, nil
	}
	var order struct {
		Identifiers []struct {
			Type  string `json:"type"`
			Value string `json:"value"`
		} `json:"identifiers"`
	}
	if json.Unmarshal(payload, &order) != nil || len(order.Identifiers) == 0 {
		return nil, nil
	}
	names := make([]string, 0, len(order.Identifiers))
	for _, id := range order.Identifiers {
		if id.Type != "dns" {
			return nil, fmt.Errorf("ACME order for a %s identifier %q: only DNS names are ordered here", id.Type, id.Value)
		}
		names = append(names, strings.ToLower(id.Value))
	}
	return names, nil
}

// orderDNS01 orders the wildcard certificate name through DNS-01: for each
// pending authorization it writes the TXT record into the store (replns
// serves it), waits until the configured nameservers answer it, accepts
// the challenge and waits for the CA; then it finalizes the order with a
// new P-256 key. The challenge records are removed whatever happens. It
// returns the key and the chain in autocert's PEM format.
func (m *CertManager) orderDNS01(ctx context.Context, name string) ([]byte, error) {
	if err := m.account.register(ctx); err != nil {
		return nil, err
	}
	client := m.account.client
	o, err := client.AuthorizeOrder(ctx, acme.DomainIDs(name))
	if err != nil {
		return nil, fmt.Errorf("new order for %s: %w", name, err)
	}
	var written []store.Challenge
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		for _, c := range written {
			if err := m.st.DeleteChallenge(dctx, c.Name, c.Value); err != nil {
				m.logger.Warn("remove challenge record", zap.String("name", c.Name), zap.Error(err))
			}
		}
	}()
	for _, u := range o.AuthzURLs {
		z, err := client.GetAuthorization(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("authorization for %s: %w", name, err)
		}
		if z.Status == acme.StatusValid {
			continue // the CA remembers an earlier validation
		}
		if z.Status != acme.StatusPending {
			return nil, fmt.Errorf("authorization for %s is %s", z.Identifier.Value, z.Status)
		}
		var chal *acme.Challenge
		for _, c := range z.Challenges {
			if c.Type == "dns-01" {
				chal = c
			}
		}
		if chal == nil {
			return nil, fmt.Errorf("authorization for %s offers no dns-01 challenge", z.Identifier.Value)
		}
		value, err := client.DNS01ChallengeRecord(chal.Token)
		if err != nil {
			return nil, fmt.Errorf("challenge record for %s: %w", z.Identifier.Value, err)
		}
		rec := store.Challenge{Name: store.ChallengePrefix + z.Identifier.Value, Value: value, ExpiresAt: m.now().Add(m.cfg.OrderTimeout + time.Minute)}
		if err := m.st.PutChallenge(ctx, rec); err != nil {
			return nil, fmt.Errorf("write challenge record %s: %w", rec.Name, err)
		}
		written = append(written, rec)
		wctx, cancel := context.WithTimeout(ctx, m.cfg.DNS01Wait)
		err = waitTXT(wctx, m.cfg.DNS01Check, rec.Name, rec.Value)
		cancel()
		if err != nil {
			return nil, err
		}
		if _, err := client.Accept(ctx, chal); err != nil {
			return nil, fmt.Errorf("accept dns-01 challenge for %s: %w", z.Identifier.Value, err)
		}
		if err := waitAuthorization(ctx, client, z.URI); err != nil {
			return nil, fmt.Errorf("validate %s by dns-01: %w", rec.Name, err)
		}
	}
	if o, err = client.WaitOrder(ctx, o.URI); err != nil {
		return nil, fmt.Errorf("order for %s: %w", name, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certificate key for %s: %w", name, err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{name}}, key)
	if err != nil {
		return nil, fmt.Errorf("certificate request for %s: %w", name, err)
	}
	chain, _, err := client.CreateOrderCert(ctx, o.FinalizeURL, csr, true)
	if err != nil {
		return nil, fmt.Errorf("finalize order for %s: %w", name, err)
	}
	data, err := encodeCertPEM(key, chain)
	if err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", name, err)
	}
	// Check what came back before anyone is served with it.
	if _, err := parseCertPEM(data, "x"+name[1:], m.now()); err != nil {
		return nil, fmt.Errorf("certificate for %s from the CA: %w", name, err)
	}
	return data, nil
}

// waitAuthorization polls an authorization until it is valid or failed:
// after 100 ms at first, then twice as long each time, up to 2 s.
// (acme.Client.WaitAuthorization waits a whole second before its second
// look, which is most of the time a wildcard takes on a fast CA.)
func waitAuthorization(ctx context.Context, client *acme.Client, url string) error {
	wait := 100 * time.Millisecond
	for {
		z, err := client.GetAuthorization(ctx, url)
		if err != nil {
			return err
		}
		switch z.Status {
		case acme.StatusValid:
			return nil
		case acme.StatusPending, acme.StatusProcessing:
		default:
			for _, c := range z.Challenges {
				if c.Error != nil {
					return fmt.Errorf("authorization %s: %w", z.Status, c.Error)
				}
			}
			return fmt.Errorf("authorization %s", z.Status)
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// waitTXT polls each nameserver (host:port) until it answers the TXT
// record name with value: replns reads the store through a cache, and the
// CA must not look before it can see the record.
func waitTXT(ctx context.Context, servers []string, name, value string) error {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	q.RecursionDesired = false
	udp := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	tcp := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	for _, server := range servers {
		var last error
		for {
			r, _, err := udp.ExchangeContext(ctx, q, server)
			if err == nil && r.Truncated {
				r, _, err = tcp.ExchangeContext(ctx, q, server)
			}
			if err == nil && hasTXT(r, value) {
				break
			}
			last = err
			if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
				if last == nil {
					last = errors.New("the record is not there yet")
				}
				return fmt.Errorf("wait for TXT %s at %s: %w (last: %w)", name, server, err, last)
			}
		}
	}
	return nil
}

func hasTXT(r *dns.Msg, value string) bool {
	for _, rr := range r.Answer {
		if t, ok := rr.(*dns.TXT); ok && strings.Join(t.Txt, "") == value {
			return true
		}
	}
	return false
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// encodeCertPEM writes autocert's format: the EC private key, then the
// chain, leaf first.
func encodeCertPEM(key *ecdsa.PrivateKey, chain [][]byte) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	_ = pem.Encode(&b, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	for _, c := range chain {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c})
	}
	return b.Bytes(), nil
}

// parseCertPEM reads autocert's format and checks that the certificate
// matches its key, is valid at now and covers host.
func parseCertPEM(data []byte, host string, now time.Time) (*tls.Certificate, error) {
	var certPEM, keyPEM []byte
	for rest := data; len(rest) > 0; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE":
			certPEM = append(certPEM, pem.EncodeToMemory(b)...)
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			keyPEM = pem.EncodeToMemory(b)
		}
	}
	if certPEM == nil || keyPEM == nil {
		return nil, errors.New("want a private key and a certificate in PEM")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err // says nothing of the key's value
	}
	leaf := cert.Leaf
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("certificate valid from %s to %s, not now", leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339))
	}
	if err := leaf.VerifyHostname(host); err != nil {
		return nil, err
	}
	return &cert, nil
}

// parseKeyPEM reads a PEM private key (SEC 1, PKCS #8 or PKCS #1).
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || !strings.Contains(b.Type, "PRIVATE KEY") {
		return nil, errors.New("not a PEM private key")
	}
	if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	return nil, errors.New("unknown private key format")
}
