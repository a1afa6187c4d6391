package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/replproxy/replproxy/store/routecache"
)

func TestHandleIndexPassed(t *testing.T) {
	ix := routecache.NewIndex(nil, nil) // never run: position zero, nothing passed
	mux := http.NewServeMux()
	HandleIndexPassed(mux, func(name string) (string, *routecache.Index) {
		if name == "east" {
			return name, ix
		}
		return name, nil
	})
	tests := []struct {
		name       string
		url        string
		wantStatus int
		wantPassed []int64
	}{
		{name: "not yet", url: "/debug/index/passed?cluster=east&xid=7,8", wantStatus: http.StatusOK, wantPassed: []int64{0, 0}},
		{name: "bad xid", url: "/debug/index/passed?cluster=east&xid=7,x", wantStatus: http.StatusBadRequest},
		{name: "no xid", url: "/debug/index/passed?cluster=east", wantStatus: http.StatusBadRequest},
		{name: "unknown cluster", url: "/debug/index/passed?cluster=west&xid=7", wantStatus: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tt.url, nil))
			if rec.Code != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if tt.wantStatus != http.StatusOK {
				return
			}
			var got IndexPassed
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if got.Cluster != "east" || !slices.Equal(got.Passed, tt.wantPassed) {
				t.Fatalf("got %+v, want cluster east, passed %v", got, tt.wantPassed)
			}
		})
	}
}
