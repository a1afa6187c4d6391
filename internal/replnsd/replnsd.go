// Package replnsd is the replns daemon, from its command line to its
// shutdown: cmd/replns is Main with the process's arguments, and the test
// platform (package platformtest) runs it in-process with the same flags
// it gives the binary.
package replnsd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/cli"
	"github.com/replproxy/replproxy/internal/handover"
	"github.com/replproxy/replproxy/internal/memlimit"
	"github.com/replproxy/replproxy/internal/reload"
	"github.com/replproxy/replproxy/nameserver"
)

// Env is where Main reads the REPLNS_* variables that stand in for flags:
// os.LookupEnv for the binary.
type Env func(name string) (string, bool)

// Main runs replns with the command-line arguments args (without the
// program name) until ctx is done, then shuts down gracefully. It logs to
// stderr and returns flag.ErrHelp after printing the usage for -h. It is
// MainWith without hooks: nothing reloads it.
func Main(ctx context.Context, args []string, env Env, stderr io.Writer) error {
	return MainWith(ctx, args, env, stderr, Hooks{})
}

// Hooks are what a caller gives the daemon besides its flags. The zero
// value is none.
type Hooks struct {
	// Reload reloads the configuration each time it receives (see
	// reload.go): cmd/replns sends on it on SIGHUP, the test platform when
	// a test asks (platformtest's ReloadDNS), so that in-process daemons
	// sharing a process do not all reload on one signal. Nil: never.
	Reload <-chan struct{}
}

// MainWith is Main with hooks.
func MainWith(ctx context.Context, args []string, env Env, stderr io.Writer, hooks Hooks) error {
	o, err := parseFlags(args, env, stderr)
	if err != nil {
		return err
	}
	logger, level, err := cli.NewLoggerLevel(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	defer func() { _ = logger.Sync() }()
	mem, err := o.memory.Resolve(env, os.DirFS("/"))
	if err != nil {
		return err
	}
	logger.Info("memory", mem.Apply().Fields()...)
	sockets, err := handover.New(ctx, o.handover, logger)
	if err != nil {
		return err
	}
	defer sockets.Close()
	if sockets != nil {
		o.server.Binder = sockets
	}
	d, err := build(o, logger, level)
	if err != nil {
		return err
	}
	d.reload, d.sockets = hooks.Reload, sockets
	err = d.run(ctx)
	logger.Info("stopped")
	return err
}

// daemon is replns built from its flags, ready to run.
type daemon struct {
	clusters        *nameserver.Clusters
	srv             *nameserver.Server
	admin           *http.Server // nil without -admin-listen
	adminAddr       string
	sockets         *handover.Sockets // nil: no handover
	shutdownTimeout time.Duration
	logger          *zap.Logger
	reloader        *reloader
	reload          <-chan struct{} // Hooks.Reload
}

// build makes the clusters, the handler, the server and the admin handler.
func build(o *options, logger *zap.Logger, level zap.AtomicLevel) (*daemon, error) {
	reg, err := cluster.Load(o.clusters)
	if err != nil {
		return nil, err
	}
	flagNS := o.dns.NameServers
	if o.zoneFile != "" {
		zf, err := nameserver.LoadZoneFile(o.zoneFile, o.dns.Zone)
		if err != nil {
			return nil, err
		}
		o.dns.Apex = zf.Apex
		if zf.NameServers != nil {
			o.dns.NameServers = zf.NameServers
		}
	}
	if len(o.dns.NameServers) == 0 {
		return nil, errors.New(nsRequired)
	}
	clusters, err := nameserver.NewClusters(reg, nameserver.ClustersConfig{Cache: o.cache, MoveHold: cmp.Or(o.moveHold, -1)}, nil, logger)
	if err != nil {
		return nil, err
	}
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	memlimit.Register(metrics, "replns")
	nameserver.RegisterClusters(metrics, clusters)
	h, err := nameserver.NewHandler(o.dns, clusters, nameserver.NewMetrics(metrics), nil, logger)
	if err != nil {
		return nil, err
	}
	srv, err := nameserver.NewServer(o.server, h, logger)
	if err != nil {
		return nil, err
	}
	d := &daemon{clusters: clusters, srv: srv, adminAddr: o.admin, shutdownTimeout: o.server.ShutdownTimeout, logger: logger}
	d.reloader = &reloader{registry: o.clusters, zoneFile: o.zoneFile, zone: o.dns.Zone, flagNS: flagNS,
		clusters: clusters, h: h, level: level, startLevel: level.Level(),
		metrics: reload.NewMetrics(metrics, "replns", time.Now()), logger: logger.Named("reload")}
	if o.admin != "" {
		mux := http.NewServeMux()
		mux.Handle("/loglevel", level) // GET, PUT {"level":"debug"}
		mux.Handle("/", nameserver.NewAdminHandler(metrics, srv, clusters))
		d.admin = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	return d, nil
}

// run binds the listeners, then answers until ctx is done or a part
// fails. DNS stops answering first; then the stores close and the admin
// listener shuts down.
func (d *daemon) run(ctx context.Context) error {
	if err := d.srv.Listen(ctx); err != nil {
		return err
	}
	var adminLn net.Listener
	if d.admin != nil {
		var err error
		if adminLn, err = d.sockets.Listen(ctx, "admin", "tcp", d.adminAddr); err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		d.logger.Info("admin listening", zap.Stringer("addr", adminLn.Addr()))
	}

	g, gctx := errgroup.WithContext(ctx)
	dataCtx, stopData := context.WithCancel(context.WithoutCancel(ctx))
	defer stopData()
	g.Go(func() error { return d.clusters.Run(dataCtx) })
	g.Go(func() error {
		reload.Loop(dataCtx, d.reload, d.reloader.apply, d.reloader.metrics, d.reloader.logger)
		return nil
	})
	serveCtx, stopServing := context.WithCancel(gctx)
	defer stopServing()
	g.Go(func() error {
		defer stopData()
		if pid := d.sockets.Predecessor(); pid != 0 {
			d.logger.Info("taking over the sockets of a running replns once its clusters are ready", zap.Int("pid", pid))
			d.waitClusters(serveCtx)
		}
		return d.srv.Serve(serveCtx)
	})
	g.Go(func() error { d.handOver(serveCtx, stopServing); return nil })
	if d.admin != nil {
		g.Go(func() error {
			if err := d.admin.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("admin: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-dataCtx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), d.shutdownTimeout)
			defer cancel()
			return d.admin.Shutdown(sctx)
		})
	}
	return g.Wait()
}

// takeOverWait is how long a replns taking over waits for every cluster to
// be ready before it settles for one (a cluster that cannot be reached
// must not hold an upgrade up for ever).
const takeOverWait = 30 * time.Second

// waitClusters returns once every cluster is ready (its store open, its
// change feed and index current), or one is after takeOverWait, or ctx is
// done: the predecessor answers meanwhile.
func (d *daemon) waitClusters(ctx context.Context) {
	start := time.Now()
	for {
		ready, total := 0, 0
		for _, s := range d.clusters.Status() {
			total++
			if s.Open && s.Synced {
				ready++
			}
		}
		if ready == total || ready > 0 && time.Since(start) > takeOverWait {
			if ready < total {
				d.logger.Warn("taking over with clusters not ready", zap.Int("ready", ready), zap.Int("clusters", total))
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// handOver tells the predecessor, once this replns answers, to drain, and
// serves the handover socket; when a successor takes over, it stops the
// serving.
func (d *daemon) handOver(ctx context.Context, stopServing func()) {
	if d.sockets == nil {
		return
	}
	defer d.sockets.Close() // a stopping process hands nothing over
	for !d.srv.Serving() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := d.sockets.Ready(ctx); err != nil {
		d.logger.Error("handover", zap.Error(err)) // this process answers either way
	}
	select {
	case <-ctx.Done():
	case <-d.sockets.Done():
		d.logger.Info("a new replns took over the sockets: draining")
		stopServing()
	}
}
