package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/replproxy/replproxy/store"
)

// domainJSON is a custom domain in -o json output.
type domainJSON struct {
	Name       string     `json:"name"`
	ReplID     string     `json:"repl_id"`
	Token      string     `json:"token"`
	VerifiedAt *time.Time `json:"verified_at,omitempty"`
	CreatedAt  *time.Time `json:"created_at,omitempty"`
	Clusters   []string   `json:"clusters"` // where it is linked
}

func domainOut(d store.Domain, in []string) domainJSON {
	return domainJSON{Name: d.Name, ReplID: d.ReplID, Token: d.Token, VerifiedAt: timePtr(d.VerifiedAt), CreatedAt: timePtr(d.CreatedAt), Clusters: in}
}

// domainName normalises a DOMAIN argument: lower case, no trailing dot,
// A-labels, and (with -zone) outside the zone.
func (a *app) domainName(arg string) (string, error) {
	if a.hasZone {
		k, err := a.zoneV.ParseName(arg)
		if err != nil {
			return "", usagef("domain %q: %v", arg, err)
		}
		if k.Kind != store.KeyDomain {
			return "", usagef("domain %q is under the zone %s: a repl's own names need no link", arg, a.zone)
		}
		return k.Name, nil
	}
	name := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(arg)), ".")
	if err := store.ValidDomain(name); err != nil {
		return "", usagef("domain %q: %v", arg, err)
	}
	return name, nil
}

// domainEverywhere looks the domain up in every reachable cluster.
// It returns the records found by cluster and the clusters it could not ask.
func domainEverywhere(ctx context.Context, all []opened, name string) (map[string]store.Domain, []error) {
	found := map[string]store.Domain{}
	var errs []error
	for _, o := range all {
		if o.err != nil {
			errs = append(errs, o.err)
			continue
		}
		d, err := o.store.GetDomain(ctx, name)
		switch {
		case err == nil:
			found[o.cluster.Name] = d
		case !errors.Is(err, store.ErrNotFound):
			errs = append(errs, fmt.Errorf("cluster %s: %w", o.cluster.Name, err))
		}
	}
	return found, errs
}

func domainLinkCommand() command {
	return command{
		name:  "domain link",
		args:  "DOMAIN REPL",
		nargs: 2,
		summary: "Links a custom domain to a repl in the cluster where the repl is live (a move takes its domains\n" +
			"along), and prints the DNS records that prove ownership. Linked domains route at once;\n" +
			"domain verify records the proof.",
		run: func(ctx context.Context, a *app, args []string) error {
			name, err := a.domainName(args[0])
			if err != nil {
				return err
			}
			stores, closeAll, err := a.openAll(ctx, "domain link (to find where the repl is live and that the domain is free)")
			if err != nil {
				return err
			}
			defer closeAll()
			id, err := a.replID(ctx, stores, args[1])
			if err != nil {
				return err
			}
			var live []string
			token := ""
			var repl store.Repl
			for _, c := range slices.Sorted(maps.Keys(stores)) {
				s := stores[c]
				if r, err := s.GetRepl(ctx, id); err == nil {
					live, repl = append(live, c), r
				} else if !errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("domain link: cluster %s: %w", c, err)
				}
				d, err := s.GetDomain(ctx, name)
				switch {
				case err == nil && d.ReplID != id:
					return fmt.Errorf("domain link: %w: %s is linked to repl %s in cluster %s; unlink it first (replctl domain unlink %s)", store.ErrConflict, name, d.ReplID, c, name)
				case err == nil:
					token = d.Token // keep the token already published
				case !errors.Is(err, store.ErrNotFound):
					return fmt.Errorf("domain link: cluster %s: %w", c, err)
				}
			}
			if len(live) == 0 {
				return fmt.Errorf("domain link: %w: repl %s is not live in any cluster", store.ErrNotFound, id)
			}
			var linked store.Domain
			for _, c := range live {
				d, err := stores[c].LinkDomain(ctx, store.Domain{Name: name, ReplID: id, Token: token})
				if errors.Is(err, store.ErrConflict) {
					d, err = stores[c].GetDomain(ctx, name) // linked already, to this repl
				}
				if err != nil {
					return fmt.Errorf("domain link in %s: %w", c, err)
				}
				token, linked = d.Token, d
			}
			out := domainOut(linked, live)
			return a.emit(out, func(w io.Writer) {
				fmt.Fprintf(w, "linked %s to repl %s (%s/%s) in %s\n\n", name, id, repl.Owner, repl.Slug, join(live))
				fmt.Fprintf(w, "To prove ownership, publish one of these records:\n")
				fmt.Fprintf(w, "  %s.\tTXT\t\"%s%s\"\n", name, verifyPrefix, token)
				fmt.Fprintf(w, "  %s%s.\tTXT\t\"%s%s\"\n", verifyLabel, name, verifyPrefix, token)
				if a.hasZone {
					fmt.Fprintf(w, "  %s.\tCNAME\t%s.\n", name, a.zoneV.Format(store.ReplIDKey(id)))
				}
				fmt.Fprintf(w, "\nthen run: replctl domain verify %s\n", name)
			})
		},
	}
}

func domainUnlinkCommand() command {
	return command{
		name:    "domain unlink",
		args:    "DOMAIN",
		nargs:   1,
		summary: "Unlinks a custom domain in every cluster that has it.",
		run: func(ctx context.Context, a *app, args []string) error {
			name, err := a.domainName(args[0])
			if err != nil {
				return err
			}
			all, closeAll, err := a.openStores(ctx)
			if err != nil {
				return err
			}
			defer closeAll()
			var (
				from []string
				errs []error
			)
			for _, o := range all {
				if o.err != nil {
					errs = append(errs, o.err)
					continue
				}
				err := o.store.UnlinkDomain(ctx, name)
				switch {
				case err == nil:
					from = append(from, o.cluster.Name)
				case !errors.Is(err, store.ErrNotFound):
					errs = append(errs, fmt.Errorf("cluster %s: %w", o.cluster.Name, err))
				}
			}
			if len(from) == 0 && len(errs) == 0 {
				return fmt.Errorf("domain unlink: %w: %s is not linked in any cluster", store.ErrNotFound, name)
			}
			if len(from) > 0 {
				err := a.emit(struct {
					Name     string   `json:"name"`
					Clusters []string `json:"unlinked_in"`
				}{name, from}, func(w io.Writer) {
					fmt.Fprintf(w, "unlinked %s in %s\n", name, join(from))
				})
				if err != nil {
					return err
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("domain unlink %s is not done everywhere; run it again when every cluster is reachable:\n%w", name, errors.Join(errs...))
			}
			return nil
		},
	}
}

func domainListCommand() command {
	var repl string
	return command{
		name:    "domain list",
		summary: "Lists the custom domains of every cluster (or of one repl), each once with the clusters that\nhave it. A cluster that cannot be reached is reported on stderr and the exit status is 1.",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&repl, "repl", "", "list the domains of `REPL` only (an id, OWNER/SLUG or a name)")
		},
		run: func(ctx context.Context, a *app, _ []string) error {
			all, closeAll, err := a.openStores(ctx)
			if err != nil {
				return err
			}
			defer closeAll()
			reachable := map[string]store.Store{}
			var errs []error
			for _, o := range all {
				if o.err != nil {
					errs = append(errs, o.err)
				} else {
					reachable[o.cluster.Name] = o.store
				}
			}
			id := ""
			if repl != "" {
				if id, err = a.replID(ctx, reachable, repl); err != nil {
					return err
				}
			}
			type key struct{ name, repl string }
			byKey := map[key]*domainJSON{}
			var keys []key
			for _, o := range all {
				if o.err != nil {
					continue
				}
				ds, err := o.store.ListDomains(ctx, id)
				if err != nil {
					errs = append(errs, fmt.Errorf("cluster %s: %w", o.cluster.Name, err))
					continue
				}
				for _, d := range ds {
					k := key{d.Name, d.ReplID}
					if dj, ok := byKey[k]; ok {
						dj.Clusters = append(dj.Clusters, o.cluster.Name)
						if dj.VerifiedAt == nil {
							dj.VerifiedAt = timePtr(d.VerifiedAt)
						}
						continue
					}
					dj := domainOut(d, []string{o.cluster.Name})
					byKey[k], keys = &dj, append(keys, k)
				}
			}
			slices.SortFunc(keys, func(x, y key) int {
				return strings.Compare(x.name+" "+x.repl, y.name+" "+y.repl)
			})
			out := []domainJSON{}
			for _, k := range keys {
				out = append(out, *byKey[k])
			}
			err = a.emit(out, func(w io.Writer) {
				row(w, "DOMAIN", "REPL", "VERIFIED", "IN", "TOKEN")
				for _, d := range out {
					row(w, d.Name, d.ReplID, stamp(deref(d.VerifiedAt)), join(d.Clusters), d.Token)
				}
			})
			if err != nil {
				return err
			}
			if len(errs) > 0 {
				return fmt.Errorf("domain list is incomplete:\n%w", errors.Join(errs...))
			}
			return nil
		},
	}
}

func domainVerifyCommand() command {
	var (
		resolverAddr string
		queryTimeout time.Duration
	)
	return command{
		name:  "domain verify",
		args:  "DOMAIN",
		nargs: 1,
		summary: "Checks over DNS that the domain's owner published one of: TXT \"replproxy-verify=<token>\" at the\n" +
			"domain or at _replproxy.<domain>, or a CNAME from the domain to <repl-id>.id.<zone> (needs -zone).\n" +
			"When one is there, the domain is recorded as verified in every cluster that has it;\n" +
			"when none is, the exit status is 5 and the message says what DNS holds instead.",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&resolverAddr, "resolver", "", "the DNS resolver to ask, `HOST:PORT` (default: the first nameserver of /etc/resolv.conf)")
			fs.DurationVar(&queryTimeout, "query-timeout", 3*time.Second, "bound on each DNS query")
		},
		run: func(ctx context.Context, a *app, args []string) error {
			name, err := a.domainName(args[0])
			if err != nil {
				return err
			}
			if resolverAddr == "" {
				if resolverAddr, err = defaultResolver(); err != nil {
					return usagef("domain verify: %v", err)
				}
			} else if _, _, err := net.SplitHostPort(resolverAddr); err != nil {
				return usagef("domain verify: --resolver %q: want HOST:PORT, e.g. 127.0.0.1:53", resolverAddr)
			}
			all, closeAll, err := a.openStores(ctx)
			if err != nil {
				return err
			}
			defer closeAll()
			found, errs := domainEverywhere(ctx, all, name)
			if len(found) == 0 {
				if len(errs) > 0 {
					return fmt.Errorf("domain verify: %s is not linked in any reachable cluster:\n%w", name, errors.Join(errs...))
				}
				return fmt.Errorf("domain verify: %w: %s is not linked; link it first (replctl domain link %s REPL)", store.ErrNotFound, name, name)
			}
			in := slices.Sorted(maps.Keys(found))
			d := found[in[0]]
			for _, c := range in[1:] {
				if found[c].ReplID != d.ReplID {
					return fmt.Errorf("domain verify: %w: %s is linked to repl %s in %s but to %s in %s", store.ErrConflict, name, d.ReplID, in[0], found[c].ReplID, c)
				}
			}
			target := ""
			if a.hasZone {
				target = a.zoneV.Format(store.ReplIDKey(d.ReplID))
			}
			p, err := resolver{addr: resolverAddr, timeout: queryTimeout}.verify(ctx, name, d.Token, target)
			if errors.Is(err, errUnverified) {
				how := fmt.Sprintf("TXT \"%s%s\" at %s or %s%s", verifyPrefix, d.Token, name, verifyLabel, name)
				if target != "" {
					how += ", or a CNAME from " + name + " to " + target
				} else {
					how += " (a CNAME to <id>.id.<zone> is checked only with -zone)"
				}
				return fmt.Errorf("domain verify %s: %w (asked %s): publish %s, then run this again; DNS changes may take the old record's TTL to show", name, err, resolverAddr, how)
			}
			if err != nil {
				return fmt.Errorf("domain verify %s: %w", name, err)
			}
			now := time.Now().UTC()
			var marked []string
			for _, c := range in {
				s := storeOf(all, c)
				if err := s.MarkDomainVerified(ctx, name, now); err != nil {
					errs = append(errs, fmt.Errorf("cluster %s: %w", c, err))
					continue
				}
				marked = append(marked, c)
			}
			err = a.emit(struct {
				Name       string    `json:"name"`
				ReplID     string    `json:"repl_id"`
				Proof      proof     `json:"proof"`
				VerifiedAt time.Time `json:"verified_at"`
				Clusters   []string  `json:"recorded_in"`
			}{name, d.ReplID, p, now, marked}, func(w io.Writer) {
				fmt.Fprintf(w, "%s: verified by %s at %s; recorded in %s\n", name, p.Method, p.Name, join(marked))
			})
			if err != nil {
				return err
			}
			if len(errs) > 0 {
				return fmt.Errorf("domain verify %s: not recorded everywhere; run it again when every cluster is reachable:\n%w", name, errors.Join(errs...))
			}
			return nil
		},
	}
}

func storeOf(all []opened, cluster string) store.Store {
	for _, o := range all {
		if o.cluster.Name == cluster {
			return o.store
		}
	}
	return nil
}
