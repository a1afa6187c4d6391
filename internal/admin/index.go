package admin

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/replproxy/replproxy/store/routecache"
)

// IndexPassed is what GET /debug/index/passed?xid=N[,N...][&cluster=NAME]
// answers, as JSON: when the cluster's name index got past every change
// of each transaction xid of the change log (routecache.Index.PassedAt),
// for benchmarks of the feed's fan-out (bench/fanout).
type IndexPassed struct {
	Cluster string `json:"cluster"`
	// Position is the XID of the index's position now.
	Position int64 `json:"position"`
	// Passed holds, for each xid asked, the Unix time in nanoseconds the
	// index got past it; 0 when it has not yet, -1 when it did too long ago
	// to say when.
	Passed []int64 `json:"passed"`
}

// HandleIndexPassed adds GET /debug/index/passed to mux, over the indexes
// of index(cluster); with one cluster, ?cluster may be left out.
func HandleIndexPassed(mux *http.ServeMux, index func(cluster string) (string, *routecache.Index)) {
	mux.HandleFunc("GET /debug/index/passed", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		name, ix := index(q.Get("cluster"))
		if ix == nil {
			http.Error(w, "no name index for cluster "+strconv.Quote(q.Get("cluster")), http.StatusNotFound)
			return
		}
		out := IndexPassed{Cluster: name, Position: ix.Position().XID}
		for f := range strings.SplitSeq(q.Get("xid"), ",") {
			xid, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				http.Error(w, "xid "+strconv.Quote(f)+": want ?xid=N[,N...], transaction ids of the change log", http.StatusBadRequest)
				return
			}
			switch at, ok := ix.PassedAt(xid); {
			case ok:
				out.Passed = append(out.Passed, at.UnixNano())
			case out.Position > xid:
				out.Passed = append(out.Passed, -1)
			default:
				out.Passed = append(out.Passed, 0)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
}
