package platformtest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// LoadOptions tune StartLoad. The zero value is one worker sending GETs
// every 2 ms and wanting 200.
type LoadOptions struct {
	// Workers send requests in parallel, each one at a time. Default: 1.
	Workers int
	// Interval paces each worker: at most one request per Interval.
	// Default: 2 ms.
	Interval time.Duration
	// Method and Body make the requests. Default: GET, no body.
	Method string
	Body   []byte
	// Check says whether a response is a success; it gets the body read
	// whole. Default: status 200.
	Check func(resp *http.Response, body []byte) error
}

// Load is traffic StartLoad sends until Stop.
type Load struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
	mu       sync.Mutex
	requests int
	failures []string
}

// LoadResult is what a Load saw.
type LoadResult struct {
	Requests int
	Failures []string // one line per failed request: why
}

// StartLoad sends requests for url with client until Stop (or the test's
// cleanup), from o.Workers workers.
func (p *Platform) StartLoad(t TB, client *http.Client, url string, o LoadOptions) *Load {
	t.Helper()
	if o.Workers <= 0 {
		o.Workers = 1
	}
	if o.Interval <= 0 {
		o.Interval = 2 * time.Millisecond
	}
	if o.Method == "" {
		o.Method = http.MethodGet
	}
	if o.Check == nil {
		o.Check = func(resp *http.Response, body []byte) error {
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %.200s", resp.Status, body)
			}
			return nil
		}
	}
	l := &Load{stop: make(chan struct{})}
	for range o.Workers {
		l.wg.Go(func() {
			tick := time.NewTicker(o.Interval)
			defer tick.Stop()
			for {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				err := send(client, url, o)
				l.mu.Lock()
				l.requests++
				if err != nil {
					l.failures = append(l.failures, err.Error())
				}
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { l.Stop() })
	return l
}

func send(client *http.Client, url string, o LoadOptions) error {
	var body io.Reader
	if o.Body != nil {
		body = bytes.NewReader(o.Body)
	}
	req, err := http.NewRequest(o.Method, url, body)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read the body: %w", err)
	}
	return o.Check(resp, b)
}

// Stop stops the load, waits for the requests in flight, and returns what
// it saw. Later calls return the same.
func (l *Load) Stop() LoadResult {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return LoadResult{Requests: l.requests, Failures: append([]string(nil), l.failures...)}
}
