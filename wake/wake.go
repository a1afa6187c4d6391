// Package wake is the container manager's side of the wake protocol
// (README, "Wake on request"): a proxy that gets a request for a sleeping
// repl records a wake in the cluster's store (store.Wakes.RequestWake); a
// Manager hears of it (store Watch: EventWake, EventResync) or finds it
// by polling ListWakes, claims it, starts the repl's container with the
// platform's Start func, and answers with FinishWake (the endpoints; the
// repl is awake) or FailWake (Start's error). The proxies see the answer
// through the store's change feed.
//
// Several Managers may run on one store (for availability): a claim keeps
// the others off a wake; a Manager refreshes its claims while Start runs,
// and a claim older than ClaimTTL (its Manager died) is taken over.
//
//	m, err := wake.New(s, wake.Config{Name: "manager-1",
//		Start: func(ctx context.Context, w store.Wake) ([]string, error) {
//			return containers.Start(ctx, w.ReplID) // the platform's own
//		}}, logger)
//	...
//	err = m.Run(ctx)
//
// Putting idle repls to sleep is the manager's own policy: read
// store.Wakes.Activity, stop the container, then store.Wakes.Sleep.
package wake

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/store"
)

// Defaults of Config.
const (
	DefaultClaimTTL     = time.Minute
	DefaultPoll         = time.Second
	DefaultStartTimeout = 2 * time.Minute
)

// Config configures a Manager. Name and Start are required; a zero (or
// negative) duration takes the default named on it.
type Config struct {
	// Name is who claims: e.g. "manager-1"; unique among the Managers of
	// one store (1 to store.MaxWakeText bytes). Required.
	Name string
	// Start starts the repl's container and returns its endpoints
	// (host:port). Its error's text is the wake's failure reason, which
	// the proxies may show. ctx ends after StartTimeout or when Run ends;
	// a Start that does not return by then is abandoned (and the wake
	// failed, on a timeout). Required.
	Start func(ctx context.Context, w store.Wake) (endpoints []string, err error)
	// ClaimTTL: a claim older than this is taken over by another Manager
	// (default 1 min). A Manager refreshes its claims every ClaimTTL/3
	// while Start runs.
	ClaimTTL time.Duration
	// Poll: also look for wakes this often (default 1 s), besides on
	// EventWake and EventResync.
	Poll time.Duration
	// StartTimeout bounds one Start (default 2 min); then the wake fails.
	StartTimeout time.Duration
}

// Manager runs a container manager's side of the protocol for one cluster.
type Manager struct {
	st  store.Store
	cfg Config
	log *zap.Logger

	mu       sync.Mutex
	inFlight map[string]bool // repl ids this Manager is waking
	wg       sync.WaitGroup  // one per wake in flight
}

// New returns a Manager of st's wakes (the cluster's store), after it
// checks cfg and fills in its defaults; a nil logger discards the logs.
func New(st store.Store, cfg Config, logger *zap.Logger) (*Manager, error) {
	if st == nil {
		return nil, errors.New("wake manager: no Store")
	}
	if cfg.Start == nil {
		return nil, errors.New("wake manager: no Start func")
	}
	if err := store.CheckWakeName("wake manager name", cfg.Name); err != nil {
		return nil, err
	}
	if cfg.ClaimTTL <= 0 {
		cfg.ClaimTTL = DefaultClaimTTL
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Manager{
		st:       st,
		cfg:      cfg,
		log:      logger.Named("wake").With(zap.String("manager", cfg.Name)),
		inFlight: make(map[string]bool),
	}, nil
}

// Run does the store's wakes until ctx is done, then waits for the wakes
// in flight to stop (their Start's ctx is ctx's child) and returns ctx's
// error. A wake whose Start was cut short by ctx is neither finished nor
// failed: its claim goes stale and another Manager (or the next Run)
// takes it over. Errors of the store are logged and retried at the next
// poll.
func (m *Manager) Run(ctx context.Context) error {
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		err := m.st.Watch(ctx, func(ev store.Event) {
			if ev.Kind == store.EventWake || ev.Kind == store.EventResync {
				poke()
			}
		})
		if ctx.Err() == nil {
			m.log.Warn("watching the store stopped; polling only", zap.Error(err))
		}
	}()
	tick := time.NewTicker(m.cfg.Poll)
	defer tick.Stop()
	for {
		m.scan(ctx)
		select {
		case <-ctx.Done():
			<-watchDone
			m.wg.Wait()
			return ctx.Err()
		case <-kick:
		case <-tick.C:
		}
	}
}

// scan claims every wake to do that is not in flight here and starts it.
func (m *Manager) scan(ctx context.Context) {
	wakes, err := m.st.ListWakes(ctx, time.Now().Add(-m.cfg.ClaimTTL))
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("list wakes", zap.Error(err))
		}
		return
	}
	for _, w := range wakes {
		if ctx.Err() != nil {
			return
		}
		m.mu.Lock()
		busy := m.inFlight[w.ReplID]
		m.mu.Unlock()
		if busy {
			continue
		}
		claimed, err := m.st.ClaimWake(ctx, w.ReplID, m.cfg.Name, time.Now().Add(-m.cfg.ClaimTTL))
		switch {
		case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
			continue // another Manager has it, or it is done
		case err != nil:
			if ctx.Err() == nil {
				m.log.Warn("claim wake", zap.String("repl", w.ReplID), zap.Error(err))
			}
			continue
		}
		m.mu.Lock()
		m.inFlight[w.ReplID] = true
		m.mu.Unlock()
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer func() {
				m.mu.Lock()
				delete(m.inFlight, claimed.ReplID)
				m.mu.Unlock()
			}()
			m.do(ctx, claimed)
		}()
	}
}

type started struct {
	endpoints []string
	err       error
}

// do runs Start for a claimed wake, keeping the claim fresh, and answers.
func (m *Manager) do(ctx context.Context, w store.Wake) {
	log := m.log.With(zap.String("repl", w.ReplID), zap.String("requested_by", w.RequestedBy))
	log.Info("waking repl")
	begin := time.Now()
	sctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	defer cancel()
	result := make(chan started, 1) // a Start that hangs leaves its goroutine, not this one
	go func() {
		eps, err := m.cfg.Start(sctx, w)
		result <- started{eps, err}
	}()
	refresh := time.NewTicker(max(m.cfg.ClaimTTL/3, time.Millisecond))
	defer refresh.Stop()
	var res started
	for waiting := true; waiting; {
		select {
		case res = <-result:
			waiting = false
		case <-sctx.Done():
			if ctx.Err() != nil {
				log.Info("stopped while waking; the claim will go stale", zap.Error(ctx.Err()))
				return
			}
			res = started{err: fmt.Errorf("starting the container took longer than %v", m.cfg.StartTimeout)}
			waiting = false
		case <-refresh.C:
			if _, err := m.st.ClaimWake(ctx, w.ReplID, m.cfg.Name, time.Now().Add(-m.cfg.ClaimTTL)); err != nil {
				if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
					log.Warn("lost the claim while waking; leaving the wake to whoever has it", zap.Error(err))
					return
				}
				log.Warn("refresh claim", zap.Error(err))
			}
		}
	}
	// Answer even when ctx ends right now: a finished Start should count.
	actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer acancel()
	if res.err == nil {
		_, err := m.st.FinishWake(actx, w.ReplID, res.endpoints)
		if err == nil {
			log.Info("repl awake", zap.Strings("endpoints", res.endpoints), zap.Duration("took", time.Since(begin)))
			return
		}
		if !errors.Is(err, store.ErrInvalid) {
			log.Error("finish wake; the claim will go stale and the wake be retried", zap.Error(err))
			return
		}
		res.err = fmt.Errorf("the container manager gave bad endpoints: %w", err)
	}
	log.Warn("wake failed", zap.Error(res.err), zap.Duration("took", time.Since(begin)))
	if err := m.st.FailWake(actx, w.ReplID, res.err.Error()); err != nil && !errors.Is(err, store.ErrNotFound) {
		log.Error("fail wake", zap.Error(err))
	}
}
