package ctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// verifyPrefix starts the TXT record that proves ownership of a domain.
const verifyPrefix = "replproxy-verify="

// verifyLabel is the label under a domain where the TXT record may be
// published instead of at the domain itself (which may be a CNAME).
const verifyLabel = "_replproxy."

// resolver asks a DNS resolver for the records that prove ownership of a
// custom domain.
type resolver struct {
	addr    string        // host:port
	timeout time.Duration // per query
}

// defaultResolver returns the first nameserver of /etc/resolv.conf.
func defaultResolver() (string, error) {
	cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil || len(cfg.Servers) == 0 {
		return "", fmt.Errorf("no resolver in /etc/resolv.conf (%v): give --resolver HOST:PORT", err)
	}
	return net.JoinHostPort(cfg.Servers[0], cfg.Port), nil
}

// proof is how a domain's ownership was shown.
type proof struct {
	Method string `json:"method"` // "TXT" or "CNAME"
	Name   string `json:"name"`   // where the record is
	Value  string `json:"value"`
}

// verify looks for TXT "replproxy-verify=<token>" at domain and at
// _replproxy.<domain>, then for a CNAME from domain to cnameTarget (when
// not empty). It returns the first proof found; without one, errUnverified
// with what was found instead. An error talking to the resolver is
// returned as it is.
func (r resolver) verify(ctx context.Context, domain, token, cnameTarget string) (proof, error) {
	want := verifyPrefix + token
	var found []string
	for _, name := range []string{domain, verifyLabel + domain} {
		rrs, err := r.query(ctx, name, dns.TypeTXT)
		if err != nil {
			return proof{}, err
		}
		var txts []string
		for _, rr := range rrs {
			if txt, ok := rr.(*dns.TXT); ok && strings.EqualFold(txt.Hdr.Name, dns.Fqdn(name)) {
				v := strings.Join(txt.Txt, "")
				if v == want {
					return proof{Method: "TXT", Name: name, Value: v}, nil
				}
				txts = append(txts, fmt.Sprintf("%q", v))
			}
		}
		if len(txts) == 0 {
			found = append(found, "no TXT at "+name)
		} else {
			found = append(found, "TXT at "+name+": "+strings.Join(txts, ", "))
		}
	}
	if cnameTarget != "" {
		rrs, err := r.query(ctx, domain, dns.TypeCNAME)
		if err != nil {
			return proof{}, err
		}
		var targets []string
		for _, rr := range rrs {
			if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, dns.Fqdn(domain)) {
				if strings.EqualFold(c.Target, dns.Fqdn(cnameTarget)) {
					return proof{Method: "CNAME", Name: domain, Value: cnameTarget}, nil
				}
				targets = append(targets, strings.TrimSuffix(c.Target, "."))
			}
		}
		if len(targets) == 0 {
			found = append(found, "no CNAME at "+domain)
		} else {
			found = append(found, "CNAME at "+domain+" to "+strings.Join(targets, ", "))
		}
	}
	return proof{}, fmt.Errorf("%w: found %s", errUnverified, strings.Join(found, "; "))
}

// query asks the resolver one question, over UDP and again over TCP when
// the answer is truncated. NXDOMAIN and NODATA are no records, not errors.
func (r resolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = true
	m.SetEdns0(1232, false)
	var (
		in  *dns.Msg
		err error
	)
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: r.timeout}
		in, _, err = c.ExchangeContext(ctx, m, r.addr)
		if err != nil {
			return nil, fmt.Errorf("ask resolver %s for %s %s: %w", r.addr, dns.TypeToString[qtype], name, err)
		}
		if !in.Truncated {
			break
		}
	}
	switch in.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return in.Answer, nil
	}
	return nil, fmt.Errorf("ask resolver %s for %s %s: %w: it answered %s", r.addr, dns.TypeToString[qtype], name, errResolver, dns.RcodeToString[in.Rcode])
}

// errResolver: the resolver failed to answer (SERVFAIL, REFUSED, ...).
var errResolver = errors.New("resolver failed")
