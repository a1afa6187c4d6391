package replproxyd

import (
	"errors"
	"fmt"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/dsn"
	"github.com/replproxy/replproxy/internal/reload"
	"github.com/replproxy/replproxy/proxy"
)

// reloader reloads what can change without a restart, all at once on
// SIGHUP (Hooks.Reload): the registry, the hop secrets, the forward TLS
// files, the static HTTPS certificate, and the log level (back to
// -log-level). Every part is read and checked before any is put in use;
// one that fails refuses the whole reload, and the configuration in use
// keeps serving.
type reloader struct {
	o          *options
	h          *proxy.Handler
	cert       *proxy.CertFile // nil without a static certificate
	level      zap.AtomicLevel
	startLevel zapcore.Level // -log-level
	metrics    *reload.Metrics
	logger     *zap.Logger
}

func (r *reloader) apply() error {
	o := r.o
	var errs []error
	reg, err := cluster.Load(o.registry)
	if err == nil {
		err = r.checkRegistry(reg)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("-registry %s: %w", o.registry, err))
		reg = nil
	}
	secret, err := os.ReadFile(o.hopSecretFile)
	if err == nil {
		_, err = proxy.ParseHopKeys(secret)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("-hop-secret-file %s: %w", o.hopSecretFile, err))
	}
	var commitPeers, commitCert func()
	if o.proxy.Peers != nil {
		if commitPeers, err = o.proxy.Peers.Prepare(reg); err != nil {
			errs = append(errs, err)
		}
	}
	certChanged := false
	if r.cert != nil {
		if commitCert, certChanged, err = r.cert.Prepare(); err != nil {
			errs = append(errs, fmt.Errorf("-tls-cert %s, -tls-key %s: %w", o.server.TLSCertFile, o.server.TLSKeyFile, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	// Everything loaded: put it in use. The peers' registry first, so that
	// a cluster the handler forwards to is one whose certificate is taken.
	if commitPeers != nil {
		commitPeers()
	}
	added, removed, err := r.h.SetRegistry(reg)
	if err != nil {
		return err // checked above; cannot happen
	}
	if err := r.h.SetHopSecret(secret); err != nil {
		return err // parsed above; cannot happen
	}
	fields := []zap.Field{zap.Strings("clusters", reg.Names()), zap.Strings("clusters_added", added),
		zap.Strings("clusters_removed", removed), zap.Strings("hop_keys", r.h.HopKeyIDs())}
	if commitCert != nil {
		commitCert()
		fields = append(fields, zap.Bool("tls_cert_changed", certChanged), zap.Time("tls_not_after", r.cert.NotAfter()))
	}
	r.level.SetLevel(r.startLevel)
	r.logger.Info("configuration reloaded", append(fields, zap.Stringer("log_level", r.startLevel))...)
	return nil
}

// checkRegistry refuses a registry this proxy cannot switch to while it
// runs: one without its own cluster, or one that moves its store (when
// the store is the registry's, not -store's).
func (r *reloader) checkRegistry(reg *cluster.Registry) error {
	if err := r.h.CheckRegistry(reg); err != nil {
		return err
	}
	if c, _ := reg.Cluster(r.o.cluster); r.o.storeFromRegistry && c.Store != r.o.storeAddr {
		return fmt.Errorf("it changes the store of this proxy's own cluster %s from %s to %s: a proxy changes its store only with a restart",
			r.o.cluster, dsn.Redact(r.o.storeAddr), dsn.Redact(c.Store))
	}
	return nil
}
