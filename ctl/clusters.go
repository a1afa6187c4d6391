package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/dsn"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/embedded"
	"github.com/replproxy/replproxy/store/postgres"
)

// opened is one cluster's store, or why it could not be opened.
type opened struct {
	cluster cluster.Cluster
	store   store.Store
	err     error
}

// openStores opens the stores of the named clusters (every cluster when
// names is empty), concurrently, and returns them in registry order with a
// function that closes them. A cluster missing from the registry is an
// error; a store that cannot be opened is reported in its entry.
func (a *app) openStores(ctx context.Context, names ...string) ([]opened, func(), error) {
	reg, err := a.registry()
	if err != nil {
		return nil, nil, err
	}
	var clusters []cluster.Cluster
	if len(names) == 0 {
		clusters = reg.Clusters
	}
	for _, n := range names {
		c, err := a.cluster(n)
		if err != nil {
			return nil, nil, err
		}
		clusters = append(clusters, c)
	}
	out := make([]opened, len(clusters))
	var wg sync.WaitGroup
	for i, c := range clusters {
		out[i].cluster = c
		wg.Go(func() {
			s, err := cluster.Open(ctx, c.Store, cluster.OpenOptions{Logger: a.logger, AppName: "replctl"})
			if err != nil {
				out[i].err = fmt.Errorf("cluster %s: %w", c.Name, err)
				return
			}
			out[i].store = s
		})
	}
	wg.Wait()
	closeAll := func() {
		for _, o := range out {
			if o.store != nil {
				o.store.Close()
			}
		}
	}
	return out, closeAll, nil
}

// openAll opens every cluster's store, for a command that needs them all
// (why says what for); one that cannot be opened is an error.
func (a *app) openAll(ctx context.Context, why string) (map[string]store.Store, func(), error) {
	all, closeAll, err := a.openStores(ctx)
	if err != nil {
		return nil, nil, err
	}
	stores := map[string]store.Store{}
	var errs []error
	for _, o := range all {
		if o.err != nil {
			errs = append(errs, o.err)
			continue
		}
		stores[o.cluster.Name] = o.store
	}
	if len(errs) > 0 {
		closeAll()
		return nil, nil, fmt.Errorf("%w\n%s needs every cluster of the registry; nothing was changed: retry when they are all reachable (replctl clusters status)",
			errors.Join(errs...), why)
	}
	return stores, closeAll, nil
}

// cluster returns the named cluster of the registry.
func (a *app) cluster(name string) (cluster.Cluster, error) {
	reg, err := a.registry()
	if err != nil {
		return cluster.Cluster{}, err
	}
	c, ok := reg.Cluster(name)
	if !ok {
		return cluster.Cluster{}, fmt.Errorf("%w: cluster %q is not in the registry %s (it has %s)", store.ErrNotFound, name, a.globals.registry, join(reg.Names()))
	}
	return c, nil
}

func backendOf(addr string) string {
	if dsn.IsPostgres(addr) {
		return "postgres"
	}
	return "embedded"
}

// clusterStatus is one line of clusters status.
type clusterStatus struct {
	Cluster    string `json:"cluster"`
	Backend    string `json:"backend"`
	Store      string `json:"store"`
	Reachable  bool   `json:"reachable"`
	Schema     int32  `json:"schema_version,omitempty"`
	SchemaWant int32  `json:"schema_version_wanted,omitempty"`
	Repls      int    `json:"repls"`
	Tombstones int    `json:"tombstones"`
	Domains    int    `json:"domains"`
	Challenges int    `json:"challenges"`
	Error      string `json:"error,omitempty"`
}

func clustersStatusCommand() command {
	return command{
		name:    "clusters status",
		summary: "Shows, for every cluster of the registry, whether its store can be reached, its schema version\n(PostgreSQL), and how many repls, tombstones, domains and challenge records it holds.\nAn unreachable cluster is a line that says why; the exit status is then 1.",
		run: func(ctx context.Context, a *app, _ []string) error {
			reg, err := a.registry()
			if err != nil {
				return err
			}
			out := make([]clusterStatus, len(reg.Clusters))
			var wg sync.WaitGroup
			for i, c := range reg.Clusters {
				wg.Go(func() { out[i] = a.status(ctx, c) })
			}
			wg.Wait()
			var down []string
			for _, s := range out {
				if !s.Reachable || s.Error != "" {
					down = append(down, s.Cluster)
				}
			}
			err = a.emit(out, func(w io.Writer) {
				row(w, "CLUSTER", "BACKEND", "REACHABLE", "SCHEMA", "REPLS", "TOMBSTONES", "DOMAINS", "CHALLENGES", "STORE")
				for _, s := range out {
					if !s.Reachable {
						row(w, s.Cluster, s.Backend, "no", "", "", "", "", "", s.Store)
						continue
					}
					schema := "-"
					if s.Backend == "postgres" {
						schema = fmt.Sprintf("%d/%d", s.Schema, s.SchemaWant)
					}
					row(w, s.Cluster, s.Backend, "yes", schema, s.Repls, s.Tombstones, s.Domains, s.Challenges, s.Store)
				}
			})
			if err != nil {
				return err
			}
			if a.output == "table" {
				for _, s := range out {
					if s.Error != "" {
						fmt.Fprintf(a.stdout, "\n%s: %s\n", s.Cluster, s.Error)
					}
				}
			}
			if len(down) > 0 {
				return fmt.Errorf("clusters status: %w: %s not reachable or not ready (see above)", store.ErrUnavailable, join(down))
			}
			return nil
		},
	}
}

// status opens one cluster's store and counts what it holds.
func (a *app) status(ctx context.Context, c cluster.Cluster) clusterStatus {
	s := clusterStatus{Cluster: c.Name, Backend: backendOf(c.Store), Store: dsn.Redact(c.Store)}
	var st store.Store
	if dsn.IsPostgres(c.Store) {
		p, err := postgres.Open(ctx, c.Store, a.logger)
		if err != nil {
			s.Error = err.Error()
			return s
		}
		defer p.Close()
		s.Reachable = true
		if s.Schema, s.SchemaWant, err = p.SchemaVersion(ctx); err != nil {
			s.Error = err.Error()
			return s
		}
		if s.Schema != s.SchemaWant {
			s.Error = p.CheckSchema(ctx).Error()
			return s
		}
		st = p
	} else {
		e, err := embedded.Open(ctx, c.Store, a.logger)
		if err != nil {
			s.Error = err.Error()
			return s
		}
		defer e.Close()
		s.Reachable = true
		st = e
	}
	stats, err := st.Stats(ctx)
	if err != nil {
		s.Error = err.Error()
		return s
	}
	s.Repls, s.Tombstones, s.Domains, s.Challenges = stats.Repls, stats.Tombstones, stats.Domains, stats.Challenges
	return s
}

// migrated is one line of migrate's output.
type migrated struct {
	Cluster string `json:"cluster"`
	Backend string `json:"backend"`
	Before  int32  `json:"schema_before,omitempty"`
	After   int32  `json:"schema_after,omitempty"`
	Result  string `json:"result"`
	Error   string `json:"error,omitempty"`
}

func migrateCommand() command {
	var (
		name string
		all  bool
	)
	return command{
		name:    "migrate",
		summary: "Applies the pending schema migrations to the PostgreSQL store of one cluster (--cluster) or of\nevery cluster (--all). Migrating is idempotent and safe to run from several places at once.\nEmbedded stores have no schema: they are only checked.",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&name, "cluster", "", "the `NAME` of the cluster to migrate")
			fs.BoolVar(&all, "all", false, "migrate every cluster of the registry")
		},
		run: func(ctx context.Context, a *app, _ []string) error {
			if (name == "") == !all {
				return usagef("migrate: give --cluster NAME or --all")
			}
			reg, err := a.registry()
			if err != nil {
				return err
			}
			clusters := reg.Clusters
			if name != "" {
				c, err := a.cluster(name)
				if err != nil {
					return err
				}
				clusters = []cluster.Cluster{c}
			}
			out := make([]migrated, len(clusters))
			for i, c := range clusters { // one at a time: each logs its migrations
				out[i] = a.migrate(ctx, c)
			}
			var failed []string
			for _, m := range out {
				if m.Error != "" {
					failed = append(failed, m.Cluster)
				}
			}
			err = a.emit(out, func(w io.Writer) {
				row(w, "CLUSTER", "BACKEND", "SCHEMA", "RESULT")
				for _, m := range out {
					schema := "-"
					if m.Backend == "postgres" && m.Error == "" {
						schema = fmt.Sprintf("%d -> %d", m.Before, m.After)
					}
					res := m.Result
					if m.Error != "" {
						res = "failed: " + strings.ReplaceAll(m.Error, "\n", " ")
					}
					row(w, m.Cluster, m.Backend, schema, res)
				}
			})
			if err != nil {
				return err
			}
			if len(failed) > 0 {
				return fmt.Errorf("migrate: %s failed; fix the cause and run it again (migrations already applied are skipped)", join(failed))
			}
			return nil
		},
	}
}

func (a *app) migrate(ctx context.Context, c cluster.Cluster) migrated {
	m := migrated{Cluster: c.Name, Backend: backendOf(c.Store)}
	if !dsn.IsPostgres(c.Store) {
		e, err := embedded.Open(ctx, c.Store, a.logger)
		if err != nil {
			m.Error = err.Error()
			return m
		}
		e.Close()
		m.Result = "nothing to migrate: an embedded store has no schema"
		return m
	}
	p, err := postgres.Open(ctx, c.Store, a.logger)
	if err != nil {
		m.Error = err.Error()
		return m
	}
	defer p.Close()
	if m.Before, _, err = p.SchemaVersion(ctx); err != nil {
		m.Error = err.Error()
		return m
	}
	if err := p.Migrate(ctx); err != nil {
		m.Error = err.Error()
		return m
	}
	if m.After, _, err = p.SchemaVersion(ctx); err != nil {
		m.Error = err.Error()
		return m
	}
	m.Result = "up to date"
	if m.After != m.Before {
		m.Result = "migrated"
	}
	return m
}
