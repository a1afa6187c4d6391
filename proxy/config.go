package proxy

import (
	"errors"
	"fmt"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// Config is what a Handler needs besides its routes and logger. Zero
// durations take the defaults named on each field.
type Config struct {
	// Zone is the platform's zone, e.g. repl.co. Required.
	Zone store.Zone
	// Cluster is the name of this proxy's cluster in Registry. Required.
	Cluster string
	// Registry lists the clusters; tombstones are forwarded to the
	// Forward address of the cluster they name. Required.
	Registry *cluster.Registry
	// HopSecret signs and verifies hop marks; every cluster shares it.
	// Required, at least 32 bytes.
	HopSecret []byte

	// DialTimeout bounds connecting to a container or another cluster's
	// proxy. Default 5 s.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the upstream's response
	// headers after the request was written (a 504 after it). Default 60 s.
	ResponseHeaderTimeout time.Duration
	// IdleConnTimeout closes idle upstream connections. Default 90 s.
	IdleConnTimeout time.Duration
	// MaxIdleConnsPerHost is the idle upstream connections kept per
	// container or peer proxy. Default 256 (Go's default is 2).
	MaxIdleConnsPerHost int
	// AccessLog writes one log line per request.
	AccessLog bool

	// Now is the clock (hop marks). Nil means time.Now.
	Now func() time.Time
}

func (c *Config) validate() error {
	var errs []error
	if c.Zone.Name() == "" {
		errs = append(errs, errors.New("no zone: set the platform's zone, e.g. -zone repl.co"))
	}
	if c.Registry == nil {
		errs = append(errs, errors.New("no cluster registry: give the registry file, e.g. -registry clusters.yaml"))
	} else if _, ok := c.Registry.Cluster(c.Cluster); !ok {
		errs = append(errs, fmt.Errorf("cluster %q is not in the registry (it has %v): set -cluster to one of them", c.Cluster, c.Registry.Names()))
	}
	if len(c.HopSecret) < 32 {
		errs = append(errs, fmt.Errorf("hop secret is %d bytes, need at least 32: write one with `head -c 32 /dev/urandom | base64 > hop.secret` and give the same file to every cluster", len(c.HopSecret)))
	}
	return errors.Join(errs...)
}

func (c *Config) setDefaults() {
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.ResponseHeaderTimeout <= 0 {
		c.ResponseHeaderTimeout = 60 * time.Second
	}
	if c.IdleConnTimeout <= 0 {
		c.IdleConnTimeout = 90 * time.Second
	}
	if c.MaxIdleConnsPerHost <= 0 {
		c.MaxIdleConnsPerHost = 256
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}
