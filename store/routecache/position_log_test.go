package routecache

import (
	"testing"
	"time"

	"github.com/replproxy/replproxy/store"
)

func TestPositionLogPassed(t *testing.T) {
	at := func(i int) time.Time { return time.Unix(1000, int64(i)) }
	tests := []struct {
		name   string
		xids   []int64 // positions added, at(0), at(1), ...
		xid    int64
		wantOK bool
		wantAt int // index into xids
	}{
		{name: "empty", xid: 5},
		{name: "not yet", xids: []int64{3, 5}, xid: 5},
		{name: "first past", xids: []int64{3, 5, 6, 9}, xid: 5, wantOK: true, wantAt: 2},
		{name: "past at the build", xids: []int64{9}, xid: 5, wantOK: true, wantAt: 0},
		{name: "equal positions", xids: []int64{3, 6, 6, 6}, xid: 5, wantOK: true, wantAt: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l positionLog
			for i, x := range tt.xids {
				l.add(store.Position{XID: x, Pos: 1}, at(i))
			}
			got, ok := l.passed(tt.xid)
			if ok != tt.wantOK || ok && !got.Equal(at(tt.wantAt)) {
				t.Fatalf("passed(%d) = %v, %v; want %v, %v", tt.xid, got, ok, at(tt.wantAt), tt.wantOK)
			}
		})
	}

	t.Run("wrapped", func(t *testing.T) {
		var l positionLog
		for i := range positionsKept + 10 {
			l.add(store.Position{XID: int64(100 + i)}, at(i))
		}
		// Positions 100..109 are forgotten: 110 is the oldest kept, and it
		// is past 105, but when 105 was first passed is not known.
		if got, ok := l.passed(105); ok {
			t.Errorf("passed(105) = %v, true; want forgotten", got)
		}
		if got, ok := l.passed(110); !ok || !got.Equal(at(11)) {
			t.Errorf("passed(110) = %v, %v; want %v (position 111)", got, ok, at(11))
		}
		if _, ok := l.passed(int64(100 + positionsKept + 9)); ok {
			t.Errorf("passed(newest) = true; want not yet")
		}
	})
}
