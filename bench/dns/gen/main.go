// Command gen writes the data of the DNS benchmark (bench/dns/run.sh): one
// zone of N repls over two clusters, as replns reads it (two PostgreSQL
// databases in replproxy's schema), as NSD reads it (a zone file) and as
// PowerDNS's gpgsql backend reads it (rows for its records table), and a
// dnsperf query file of the benchmark's mix:
//
//	80% A for existing repls (90% by name, 10% by id), 10% AAAA for
//	existing repls, 5% names that do not exist, 5% apex SOA/NS, id.<zone>
//	and _acme-challenge TXT.
//
// Challenge records: one for every tenth owner (_acme-challenge.<owner>,
// as for a wildcard certificate) and one for every hundredth repl
// (_acme-challenge.<slug>.<owner>), in the store of the repl's (or
// owner's) cluster, in the zone file and in PowerDNS's records.
//
// With -torture N it also writes the query files of the water-torture
// benchmark (bench/dns/torture.sh), N lines each:
//
//	torture-challenge.txt  TXT for _acme-challenge.<existing repl name>
//	                       (89% by name, 10% by id, and 1% by
//	                       name for a repl that has a record)
//	torture-random.txt     A for <random>.<existing owner>.<zone> and
//	                       <random>.id.<zone>, half each
//	torture-spread.txt     A for existing repl names (90% by name, 10% by
//	                       id) drawn uniformly from all repls, in random case
//	legit.txt              A for 1,000 existing repl names spread over the
//	                       repls and both clusters, lower case: the
//	                       legitimate stream beside each flood
//
// The challenge and spread floods draw from disjoint halves of the repls
// (by i/2 even or odd: both clusters in each), so that one flood does not
// warm a cache for the next.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/replproxy/replproxy/store/postgres"
)

const zone = "repl.test"

func main() {
	out := flag.String("out", "", "the folder to write into")
	n := flag.Int("repls", 100_000, "repls in the zone")
	queries := flag.Int("queries", 1_000_000, "lines of the dnsperf query file")
	east := flag.String("east", "", "DSN of the east cluster's database (created empty)")
	west := flag.String("west", "", "DSN of the west cluster's database")
	torture := flag.Int("torture", 0, "lines of each water-torture query file (0: none)")
	flag.Parse()
	clusters := [2]struct{ v4, v6 string }{
		{"192.0.2.10", "2001:db8::10"},
		{"198.51.100.10", "2001:db8:1::10"},
	}
	if *out == "" || *east == "" || *west == "" {
		log.Fatal("usage: gen -out DIR -east DSN -west DSN [-repls N] [-queries N]")
	}
	perOwner := 10
	owners := *n / perOwner
	challenges := owners / 10
	repl := func(i int) (id, owner, slug string) {
		return fmt.Sprintf("r%07d", i), fmt.Sprintf("u%06d", i/perOwner), fmt.Sprintf("app%d", i%perOwner)
	}

	// replns: each cluster's database, in replproxy's schema.
	ctx := context.Background()
	for c, dsn := range []string{*east, *west} {
		p, err := postgres.Open(ctx, dsn, nil)
		check(err)
		check(p.Migrate(ctx))
		p.Close()
		conn, err := pgx.Connect(ctx, dsn)
		check(err)
		var rows [][]any
		for i := c; i < *n; i += 2 {
			id, owner, slug := repl(i)
			rows = append(rows, []any{id, owner, slug, []string{"10.0.0.1:8080"}, int64(1)})
		}
		_, err = conn.CopyFrom(ctx, pgx.Identifier{"repls"}, []string{"id", "owner", "slug", "endpoints", "generation"}, pgx.CopyFromRows(rows))
		check(err)
		rows = rows[:0]
		for o := c; o < challenges; o += 2 {
			rows = append(rows, []any{fmt.Sprintf("_acme-challenge.u%06d.%s", o, zone), fmt.Sprintf("tok%d", o), time.Now().Add(24 * time.Hour)})
		}
		for i := c; i < *n; i += 2 {
			if replChallenge(i) {
				_, owner, slug := repl(i)
				rows = append(rows, []any{fmt.Sprintf("_acme-challenge.%s.%s.%s", slug, owner, zone), fmt.Sprintf("rtok%d", i), time.Now().Add(24 * time.Hour)})
			}
		}
		_, err = conn.CopyFrom(ctx, pgx.Identifier{"challenges"}, []string{"name", "value", "expires_at"}, pgx.CopyFromRows(rows))
		check(err)
		_, err = conn.Exec(ctx, "ANALYZE")
		check(err)
		check(conn.Close(ctx))
	}

	// NSD's zone file and PowerDNS's records (domain_id 1, tab-separated
	// for COPY: domain_id name type content ttl prio disabled auth).
	zf := create(filepath.Join(*out, zone+".zone"))
	pd := create(filepath.Join(*out, "pdns-records.tsv"))
	soa := "ns1.repl.test. hostmaster.repl.test. 1 14400 3600 1209600 60"
	fmt.Fprintf(zf, "$ORIGIN %s.\n$TTL 3600\n@ SOA %s\n@ NS ns1\nns1 A 127.0.0.1\n", zone, soa)
	pdns := func(name, typ, content string, ttl int) {
		fmt.Fprintf(pd, "1\t%s\t%s\t%s\t%d\t0\tf\tt\n", name, typ, content, ttl)
	}
	pdns(zone, "SOA", soa, 3600)
	pdns(zone, "NS", "ns1.repl.test", 3600)
	pdns("ns1."+zone, "A", "127.0.0.1", 3600)
	for i := range *n {
		id, owner, slug := repl(i)
		cl := clusters[i%2]
		for _, name := range []string{slug + "." + owner, id + ".id"} {
			fmt.Fprintf(zf, "%s 60 A %s\n%s 60 AAAA %s\n", name, cl.v4, name, cl.v6)
			pdns(name+"."+zone, "A", cl.v4, 60)
			pdns(name+"."+zone, "AAAA", cl.v6, 60)
		}
	}
	for o := range challenges {
		fmt.Fprintf(zf, "_acme-challenge.u%06d 10 TXT \"tok%d\"\n", o, o)
		pdns(fmt.Sprintf("_acme-challenge.u%06d.%s", o, zone), "TXT", fmt.Sprintf("\"tok%d\"", o), 10)
	}
	for i := range *n {
		if replChallenge(i) {
			_, owner, slug := repl(i)
			fmt.Fprintf(zf, "_acme-challenge.%s.%s 10 TXT \"rtok%d\"\n", slug, owner, i)
			pdns(fmt.Sprintf("_acme-challenge.%s.%s.%s", slug, owner, zone), "TXT", fmt.Sprintf("\"rtok%d\"", i), 10)
		}
	}
	check(zf.Flush())
	check(pd.Flush())

	// The query files: the same mix of existing names in each (so one
	// pass warms every cache), with new random names in each (so no cache
	// has seen them), and a flood of random names only.
	for seed, name := range []string{"warm.txt", "fixed.txt", "saturation.txt"} {
		writeQueries(filepath.Join(*out, name), *queries, *n, challenges, uint64(seed), repl, false)
	}
	writeQueries(filepath.Join(*out, "flood.txt"), *queries, *n, challenges, 99, repl, true)
	if *torture > 0 {
		writeTorture(*out, *torture, *n, repl)
	}
}

// replChallenge reports whether repl i has a challenge record of its own.
func replChallenge(i int) bool { return i%100 == 0 }

// writeTorture writes the query files of the water-torture benchmark (see
// the package comment).
func writeTorture(out string, lines, n int, repl func(int) (string, string, string)) {
	r := rand.New(rand.NewPCG(7, 8))
	// half draws repl i with (i/2)%2 == h, uniformly: both clusters.
	half := func(h int) int {
		i := r.IntN(n/4)*4 + h*2 + r.IntN(2)
		return min(i, n-1)
	}
	name := func(i int) string {
		id, owner, slug := repl(i)
		if r.IntN(10) == 0 {
			return id + ".id." + zone
		}
		return slug + "." + owner + "." + zone
	}
	q := create(filepath.Join(out, "torture-challenge.txt"))
	for range lines {
		i := half(1)
		id, owner, slug := repl(i)
		switch k := r.IntN(100); {
		case k == 0:
			_, owner, slug = repl(i / 100 * 100) // one that has a record
			fmt.Fprintf(q, "_acme-challenge.%s.%s.%s TXT\n", slug, owner, zone)
		case k < 10:
			fmt.Fprintf(q, "_acme-challenge.%s.id.%s TXT\n", id, zone)
		default:
			fmt.Fprintf(q, "_acme-challenge.%s.%s.%s TXT\n", slug, owner, zone)
		}
	}
	check(q.Flush())
	q = create(filepath.Join(out, "torture-random.txt"))
	for range lines {
		if r.IntN(2) == 0 {
			_, owner, _ := repl(r.IntN(n))
			fmt.Fprintf(q, "x%x.%s.%s A\n", r.Uint64(), owner, zone)
		} else {
			fmt.Fprintf(q, "x%x.id.%s A\n", r.Uint64(), zone)
		}
	}
	check(q.Flush())
	q = create(filepath.Join(out, "torture-spread.txt"))
	for range lines {
		b := []byte(name(half(0)))
		for j, c := range b {
			if c >= 'a' && c <= 'z' && r.IntN(2) == 0 {
				b[j] = c - 'a' + 'A'
			}
		}
		fmt.Fprintf(q, "%s A\n", b)
	}
	check(q.Flush())
	q = create(filepath.Join(out, "legit.txt"))
	for k := range 1000 {
		fmt.Fprintf(q, "%s A\n", name(min(k*(n/1000)+k%2, n-1))) // both clusters
	}
	check(q.Flush())
}

// writeQueries writes a dnsperf query file of the benchmark's mix, or of
// random names only.
func writeQueries(path string, lines, n, challenges int, seed uint64, repl func(int) (string, string, string), flood bool) {
	q := create(path)
	r := rand.New(rand.NewPCG(1, 2))         // the mix and the existing names
	labels := rand.New(rand.NewPCG(seed, 3)) // the random names
	for range lines {
		id, owner, slug := repl(r.IntN(n))
		name := slug + "." + owner + "." + zone
		if r.IntN(10) == 0 {
			name = id + ".id." + zone
		}
		p := r.IntN(100)
		if flood {
			p = 92
		}
		switch {
		case p < 80:
			fmt.Fprintf(q, "%s A\n", name)
		case p < 90:
			fmt.Fprintf(q, "%s AAAA\n", name)
		case p < 95:
			if labels.IntN(2) == 0 {
				fmt.Fprintf(q, "x%x.%s.%s A\n", labels.Uint64(), owner, zone) // a known owner
			} else {
				fmt.Fprintf(q, "x%x.y%x.%s A\n", labels.Uint64(), labels.Uint32(), zone)
			}
		default:
			switch r.IntN(4) {
			case 0:
				fmt.Fprintf(q, "%s SOA\n", zone)
			case 1:
				fmt.Fprintf(q, "%s NS\n", zone)
			case 2:
				fmt.Fprintf(q, "id.%s A\n", zone)
			default:
				fmt.Fprintf(q, "_acme-challenge.u%06d.%s TXT\n", r.IntN(challenges), zone)
			}
		}
	}
	check(q.Flush())
}

type file struct {
	*bufio.Writer
	f *os.File
}

func create(path string) *file {
	f, err := os.Create(path)
	check(err)
	return &file{bufio.NewWriterSize(f, 1<<20), f}
}

func (f *file) Flush() error {
	if err := f.Writer.Flush(); err != nil {
		return err
	}
	return f.f.Close()
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
