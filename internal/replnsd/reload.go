package replnsd

import (
	"errors"
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/reload"
	"github.com/replproxy/replproxy/nameserver"
)

// reloader reloads what can change without a restart, all at once on
// SIGHUP (Hooks.Reload): the registry (clusters added, removed, or with a
// new store or new addresses), the zone file (apex records, and the name
// servers when it lists them), and the log level (back to -log-level).
// Every part is read and checked before any is put in use; one that fails
// refuses the whole reload, and the configuration in use keeps serving.
type reloader struct {
	registry, zoneFile, zone string
	flagNS                   []nameserver.NameServer // -ns; nil when not given
	clusters                 *nameserver.Clusters
	h                        *nameserver.Handler
	level                    zap.AtomicLevel
	startLevel               zapcore.Level
	metrics                  *reload.Metrics
	logger                   *zap.Logger
}

func (r *reloader) apply() error {
	var errs []error
	reg, err := cluster.Load(r.registry)
	if err != nil {
		errs = append(errs, fmt.Errorf("-registry %s: %w", r.registry, err))
	}
	nss, apex := r.flagNS, nameserver.Apex{}
	if r.zoneFile != "" {
		zf, err := nameserver.LoadZoneFile(r.zoneFile, r.zone)
		switch {
		case err != nil:
			errs = append(errs, err) // names the file and the line
		case zf.NameServers != nil:
			nss = zf.NameServers
		}
		apex = zf.Apex
	}
	switch {
	case len(nss) == 0 && r.zoneFile != "":
		errs = append(errs, fmt.Errorf("zone file %s: it lists no name servers (ns) and -ns is not set: the zone needs its NS records", r.zoneFile))
	case len(nss) > 0:
		if err := r.h.CheckStatic(nss, apex); err != nil {
			errs = append(errs, fmt.Errorf("zone file %s: %w", r.zoneFile, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	added, removed, restarted, err := r.clusters.SetRegistry(reg)
	if err != nil {
		return err // stopping
	}
	r.h.SetClusters(reg.Clusters)
	serial, changed, err := r.h.SetStatic(nss, apex)
	if err != nil {
		return err // checked above; cannot happen
	}
	r.level.SetLevel(r.startLevel)
	r.logger.Info("configuration reloaded", zap.Strings("clusters", reg.Names()), zap.Strings("clusters_added", added),
		zap.Strings("clusters_removed", removed), zap.Strings("clusters_restarted", restarted),
		zap.Bool("zone_changed", changed), zap.Uint32("soa_serial", serial), zap.Stringer("log_level", r.startLevel))
	return nil
}
