// Command probe is the legitimate stream of the water-torture benchmark
// (bench/dns/torture.sh): it sends DNS queries over UDP at a fixed rate
// (open loop: a slow answer does not delay the next query), cycling through
// the names of a dnsperf-style file ("name TYPE" a line), from its own
// source address, and prints one line of what came back:
//
//	sent=10000 answered=9998 lost=2 bad=0 p50_ms=0.101 p99_ms=0.210 p999_ms=1.914 max_ms=3.201
//
// A query unanswered within -timeout is lost; lost queries count as
// infinitely slow in the percentiles (so p99 is "inf" when more than 1% were
// lost). bad counts answers that are not NOERROR with at least one record in
// the answer section (their latency counts).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

func main() {
	server := flag.String("server", "127.0.0.1:53", "the server, host:port")
	source := flag.String("source", "127.0.0.2", "the local address to send from")
	names := flag.String("names", "", "the query file: name TYPE, a line")
	rate := flag.Int("rate", 1000, "queries per second")
	duration := flag.Duration("duration", 10*time.Second, "how long to send")
	timeout := flag.Duration("timeout", time.Second, "an answer later than this is lost")
	flag.Parse()

	msgs, err := load(*names)
	if err != nil {
		log.Fatal(err)
	}
	n := int(float64(*rate) * duration.Seconds())
	if n < 1 || n > 1<<16 {
		log.Fatalf("rate x duration must be 1-65536 queries (one id each), not %d", n)
	}
	raddr, err := net.ResolveUDPAddr("udp", *server)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(*source)}, raddr)
	if err != nil {
		log.Fatal(err)
	}
	_ = conn.SetReadBuffer(4 << 20)

	sentAt := make([]atomic.Int64, n) // UnixNano of each query's send, by id
	lat := make([]time.Duration, n)   // by id; only the reader writes it
	bad := 0
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the reader
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			m, err := conn.Read(buf)
			now := time.Now().UnixNano()
			if err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					log.Print(err)
				}
				return
			}
			if m < 12 {
				continue
			}
			id := int(buf[0])<<8 | int(buf[1])
			if id >= n || lat[id] != 0 {
				continue
			}
			t := sentAt[id].Load()
			if t == 0 {
				continue
			}
			lat[id] = time.Duration(max(now-t, 1))
			rcode := buf[3] & 0x0f
			ancount := int(buf[6])<<8 | int(buf[7])
			if rcode != dns.RcodeSuccess || ancount == 0 {
				bad++
			}
		}
	}()

	interval := time.Second / time.Duration(*rate)
	start := time.Now()
	pkt := make([]byte, 0, 512)
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		pkt = append(pkt[:0], msgs[i%len(msgs)]...)
		pkt[0], pkt[1] = byte(i>>8), byte(i)
		sentAt[i].Store(time.Now().UnixNano())
		if _, err := conn.Write(pkt); err != nil {
			log.Fatal(err)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(*timeout))
	wg.Wait()

	answered := 0
	all := make([]float64, n) // ms; +Inf when lost
	for i, d := range lat {
		if d == 0 || d > *timeout {
			all[i] = math.Inf(1)
			continue
		}
		answered++
		all[i] = float64(d) / 1e6
	}
	slices.Sort(all)
	pct := func(p float64) string {
		v := all[min(int(math.Ceil(p*float64(n)))-1, n-1)]
		if math.IsInf(v, 1) {
			return "inf"
		}
		return fmt.Sprintf("%.3f", v)
	}
	fmt.Printf("sent=%d answered=%d lost=%d bad=%d p50_ms=%s p99_ms=%s p999_ms=%s max_ms=%s\n",
		n, answered, n-answered, bad, pct(0.5), pct(0.99), pct(0.999), pct(1))
}

// load packs one query for each line of the file.
func load(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var msgs [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		typ, ok := dns.StringToType[strings.ToUpper(fields[1])]
		if !ok {
			return nil, fmt.Errorf("%s: unknown type %q", path, fields[1])
		}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(fields[0]), typ)
		m.RecursionDesired = false
		b, err := m.Pack()
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, b)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(msgs) == 0 {
		return nil, fmt.Errorf("%s: no queries", path)
	}
	return msgs, nil
}
