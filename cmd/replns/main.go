// Command replns is the authoritative DNS server of a replproxy platform's
// zone: it answers each repl's name with the load-balancer addresses of the
// cluster that hosts it, read from every cluster's store, and serves the
// zone's apex and DNS-01 challenge records. Run replns -h for its flags;
// each can also be set in the environment (REPLNS_<FLAG>).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/cli"
	"github.com/replproxy/replproxy/nameserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "replns:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	o, err := parseFlags(args, os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	logger, err := cli.NewLoggerTo(os.Stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	defer func() { _ = logger.Sync() }()
	d, err := build(o, logger)
	if err != nil {
		return err
	}
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
	shutdownTimeout time.Duration
	logger          *zap.Logger
}

// build makes the clusters, the handler, the server and the admin handler.
func build(o *options, logger *zap.Logger) (*daemon, error) {
	reg, err := cluster.Load(o.clusters)
	if err != nil {
		return nil, err
	}
	if o.zoneFile != "" {
		if o.dns.Apex, err = nameserver.LoadApex(o.zoneFile); err != nil {
			return nil, err
		}
	}
	clusters, err := nameserver.NewClusters(reg, nameserver.ClustersConfig{Cache: o.cache}, logger)
	if err != nil {
		return nil, err
	}
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	nameserver.RegisterClusters(metrics, clusters)
	h, err := nameserver.NewHandler(o.dns, clusters, nameserver.NewMetrics(metrics), logger)
	if err != nil {
		return nil, err
	}
	srv, err := nameserver.NewServer(o.server, h, logger)
	if err != nil {
		return nil, err
	}
	d := &daemon{clusters: clusters, srv: srv, adminAddr: o.admin, shutdownTimeout: o.server.ShutdownTimeout, logger: logger}
	if o.admin != "" {
		d.admin = &http.Server{Handler: nameserver.NewAdminHandler(metrics, srv, clusters), ReadHeaderTimeout: 10 * time.Second}
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
		if adminLn, err = net.Listen("tcp", d.adminAddr); err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		d.logger.Info("admin listening", zap.Stringer("addr", adminLn.Addr()))
	}

	g, gctx := errgroup.WithContext(ctx)
	dataCtx, stopData := context.WithCancel(context.WithoutCancel(ctx))
	defer stopData()
	g.Go(func() error { return d.clusters.Run(dataCtx) })
	g.Go(func() error {
		defer stopData()
		return d.srv.Serve(gctx)
	})
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
