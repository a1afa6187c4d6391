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
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/nameserver"
)

func main() {
	err := run(os.Args[1:])
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "replns:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	o, err := parseFlags(args, os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	logger, err := newLogger(o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	defer func() { _ = logger.Sync() }()

	reg, err := cluster.Load(o.clusters)
	if err != nil {
		return err
	}
	if o.zoneFile != "" {
		if o.dns.Apex, err = nameserver.LoadApex(o.zoneFile); err != nil {
			return err
		}
	}
	clusters, err := nameserver.NewClusters(reg, nameserver.ClustersConfig{Cache: o.cache}, logger)
	if err != nil {
		return err
	}
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	nameserver.RegisterClusters(metrics, clusters)
	h, err := nameserver.NewHandler(o.dns, clusters, nameserver.NewMetrics(metrics), logger)
	if err != nil {
		return err
	}
	srv, err := nameserver.NewServer(o.server, h, logger)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := srv.Listen(ctx); err != nil {
		return err
	}
	var admin *http.Server
	var adminLn net.Listener
	if o.admin != "" {
		if adminLn, err = net.Listen("tcp", o.admin); err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		admin = &http.Server{Handler: nameserver.NewAdminHandler(metrics, srv, clusters), ReadHeaderTimeout: 10 * time.Second}
		logger.Info("admin listening", zap.Stringer("addr", adminLn.Addr()))
	}

	// The stores close after DNS has stopped answering.
	dataCtx, stopData := context.WithCancel(context.WithoutCancel(ctx))
	defer stopData()
	var g errgroup.Group
	g.Go(func() error { return clusters.Run(dataCtx) })
	g.Go(func() error {
		defer stopData()
		return srv.Serve(ctx)
	})
	if admin != nil {
		g.Go(func() error {
			if err := admin.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("admin: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-dataCtx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), o.server.ShutdownTimeout)
			defer cancel()
			return admin.Shutdown(sctx)
		})
	}
	err = g.Wait()
	logger.Info("stopped")
	return err
}

func newLogger(level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	cfg := zap.NewProductionConfig()
	switch format {
	case "json":
	case "console":
		cfg = zap.NewDevelopmentConfig()
	default:
		return nil, fmt.Errorf("-log-format %q: want json or console", format)
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.DisableStacktrace = true
	return cfg.Build()
}
