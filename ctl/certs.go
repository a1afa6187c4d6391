package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/replproxy/replproxy/store"
)

// certJSON is a stored certificate in -o json output.
type certJSON struct {
	Cluster   string    `json:"cluster"`
	Key       string    `json:"key"`
	Names     []string  `json:"names"`
	Issuer    string    `json:"issuer"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	ExpiresIn string    `json:"expires_in"`
}

func certsListCommand() command {
	var cluster string
	return command{
		name:    "certs list",
		summary: "Lists the TLS certificates the proxies of every cluster (or of one) share: names, issuer and expiry.",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cluster, "cluster", "", "list the cluster `NAME` only")
		},
		run: func(ctx context.Context, a *app, _ []string) error {
			all, closeAll, err := a.openStores(ctx, clustersFlag(cluster)...)
			if err != nil {
				return err
			}
			defer closeAll()
			out := []certJSON{}
			var errs []error
			now := time.Now()
			for _, o := range all {
				if o.err != nil {
					errs = append(errs, o.err)
					continue
				}
				certs, ok := store.CertsOf(o.store)
				if !ok {
					errs = append(errs, fmt.Errorf("cluster %s: its store keeps no certificates", o.cluster.Name))
					continue
				}
				list, err := store.ListCertificates(ctx, certs)
				if err != nil {
					errs = append(errs, fmt.Errorf("cluster %s: %w", o.cluster.Name, err))
					continue
				}
				for _, c := range list {
					out = append(out, certJSON{Cluster: o.cluster.Name, Key: c.Key, Names: c.Names, Issuer: c.Issuer,
						NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(), ExpiresIn: c.NotAfter.Sub(now).Round(time.Minute).String()})
				}
			}
			if err := a.emit(out, func(w io.Writer) {
				row(w, "CLUSTER", "CERTIFICATE", "NAMES", "ISSUER", "NOT AFTER", "EXPIRES IN")
				for _, c := range out {
					row(w, c.Cluster, c.Key, strings.Join(c.Names, ","), c.Issuer, stamp(c.NotAfter), c.ExpiresIn)
				}
			}); err != nil {
				return err
			}
			if len(errs) > 0 {
				return fmt.Errorf("certs list is incomplete:\n%w", errors.Join(errs...))
			}
			return nil
		},
	}
}
