package proxy

import (
	"errors"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/cluster"
)

// Registry returns the cluster registry in use: Config.Registry, or what
// SetRegistry put in its place.
func (h *Handler) Registry() *cluster.Registry { return h.registry.Load() }

// CheckRegistry reports whether reg could replace the registry in use:
// it must still have this proxy's cluster.
func (h *Handler) CheckRegistry(reg *cluster.Registry) error {
	if reg == nil {
		return errors.New("no cluster registry")
	}
	if _, ok := reg.Cluster(h.cfg.Cluster); !ok {
		return fmt.Errorf("it removes this proxy's own cluster %s (it has %v): a proxy cannot leave its cluster without a restart", h.cfg.Cluster, reg.Names())
	}
	return nil
}

// SetRegistry puts reg in use for every request that follows: a tombstone
// naming a cluster added is forwarded there, one naming a cluster removed
// gets the 502 of a cluster this proxy does not know (forward), and a
// cluster's new forward address is dialled from now on. Idle connections
// to a forward address no cluster has any more are closed; connections in
// use, upgraded ones (WebSockets) included, are left to finish, and close
// when idle (-upstream-idle-timeout). It returns the clusters added and
// removed, and refuses (changing nothing) what CheckRegistry refuses.
func (h *Handler) SetRegistry(reg *cluster.Registry) (added, removed []string, err error) {
	if err := h.CheckRegistry(reg); err != nil {
		return nil, nil, err
	}
	old := h.registry.Swap(reg)
	gone := false
	for _, c := range old.Clusters {
		now, ok := reg.Cluster(c.Name)
		if !ok {
			removed = append(removed, c.Name)
		}
		if !ok || now.Forward != c.Forward {
			h.upstream.dropForward(c.Forward)
			gone = true
		}
	}
	for _, c := range reg.Clusters {
		if _, ok := old.Cluster(c.Name); !ok {
			added = append(added, c.Name)
		}
	}
	if gone {
		h.logger.Debug("idle connections to forward addresses no longer in the registry closed", zap.Strings("removed", removed))
	}
	return added, removed, nil
}

// clusterAt names the cluster of the registry in use whose forward
// address is addr.
func (h *Handler) clusterAt(addr string) (string, bool) {
	reg := h.registry.Load()
	i := slices.IndexFunc(reg.Clusters, func(c cluster.Cluster) bool { return c.Forward == addr })
	if i < 0 {
		return "", false
	}
	return reg.Clusters[i].Name, true
}

// dropForward closes the idle connections that forward to addr, a
// forward address the registry no longer has: the lean pool's for it
// (plaintext forwarding), and every idle one of the transports that may
// hold some (http.Transport cannot close one host's alone: for the
// tuned transport of large bodies that costs containers a new connection
// each, once). Connections in use are not touched.
func (u *upstream) dropForward(addr string) {
	u.pool.dropAddr(addr)
	if u.peers != nil {
		u.peers.CloseIdleConnections()
		return
	}
	u.slow.CloseIdleConnections()
}
