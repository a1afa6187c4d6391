package ondemand

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"golang.org/x/crypto/acme"

	"github.com/replproxy/replproxy/store"
)

// orderDNS01 orders the wildcard certificate name through DNS-01: for each
// pending authorization it writes the TXT record into the store (replns
// serves it), waits until the configured nameservers answer it, accepts
// the challenge and waits for the CA; then it finalizes the order with a
// new P-256 key. The challenge records are removed whatever happens. It
// returns the key and the chain in autocert's PEM format.
func (m *Manager) orderDNS01(ctx context.Context, name string) ([]byte, error) {
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
