package ratelog

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	l := New(time.Second)
	t0 := time.Unix(1000, 0)
	if ok, n := l.Allow(t0); !ok || n != 0 {
		t.Fatalf("first line: %v %d, want let through, 0 held", ok, n)
	}
	for i := range 99 {
		if ok, _ := l.Allow(t0.Add(time.Duration(i) * time.Millisecond)); ok {
			t.Fatalf("line %d within the second was let through", i)
		}
	}
	if ok, n := l.Allow(t0.Add(time.Second)); !ok || n != 99 {
		t.Fatalf("a second later: %v %d, want let through with 99 held", ok, n)
	}
	if ok, _ := l.Allow(t0.Add(time.Second + time.Millisecond)); ok {
		t.Fatal("a line right after was let through")
	}
}
