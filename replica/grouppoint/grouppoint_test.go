package grouppoint

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/drsync/drsync/vmspec"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// pts builds a VM's points from "epoch:cut" words, cut "-" for an untagged
// epoch; every tag is of group g with members.
func pts(members []string, words ...string) []Point {
	var out []Point
	for _, w := range words {
		var e uint64
		var c string
		fmt.Sscanf(strings.Replace(w, ":", " ", 1), "%d %s", &e, &c)
		p := Point{Epoch: e, Cut: t0.Add(time.Duration(e) * time.Second)}
		if c != "-" {
			var cut uint64
			fmt.Sscan(c, &cut)
			p.Tag = &vmspec.GroupCut{Group: "g", Cut: cut, Members: members}
		}
		out = append(out, p)
	}
	return out
}

var ab = []string{"a", "b"}

// summary renders group points as "cut:a=E,b=E" words, newest first.
func summary(gps []GroupPoint) string {
	var ws []string
	for _, g := range gps {
		var ms []string
		for _, m := range g.Members {
			ms = append(ms, fmt.Sprintf("%s=%d", m.VM, m.Epoch))
		}
		ws = append(ws, fmt.Sprintf("%d:%s", g.Cut, strings.Join(ms, ",")))
	}
	return strings.Join(ws, " ")
}

func TestComplete(t *testing.T) {
	for _, tc := range []struct {
		name   string
		points map[string][]Point
		want   string
	}{
		{"both members at every cut", map[string][]Point{
			"a": pts(ab, "1:1", "2:2", "3:3"),
			"b": pts(ab, "5:1", "6:2", "7:3"),
		}, "3:a=3,b=7 2:a=2,b=6 1:a=1,b=5"},
		{"members with later epochs of their own", map[string][]Point{
			"a": pts(ab, "1:1", "2:-", "3:-", "4:2", "5:-"),
			"b": pts(ab, "1:1", "2:2", "3:-"),
		}, "2:a=4,b=2 1:a=1,b=1"},
		{"a member has not committed the newest cut", map[string][]Point{
			"a": pts(ab, "1:1", "2:2", "3:3"),
			"b": pts(ab, "1:1", "2:2"),
		}, "2:a=2,b=2 1:a=1,b=1"},
		{"a member is missing", map[string][]Point{
			"a": pts(ab, "1:1", "2:2"),
		}, ""},
		{"a member's point was pruned", map[string][]Point{
			"a": pts(ab, "1:1", "2:2", "3:3"),
			"b": pts(ab, "2:2", "3:3"),
		}, "3:a=3,b=3 2:a=2,b=2"},
		{"untagged only", map[string][]Point{
			"a": pts(ab, "1:-"), "b": pts(ab, "1:-"),
		}, ""},
		{"a VM that is no member is ignored", map[string][]Point{
			"a": pts(ab, "1:1"), "b": pts(ab, "1:1"), "c": pts(ab, "1:1"), // a tag naming others
		}, "1:a=1,b=1"},
		{"members disagree on the member list", map[string][]Point{
			"a": pts(ab, "1:1", "2:2"),
			"b": append(pts(ab, "1:1"), pts([]string{"b"}, "2:2")...),
		}, "1:a=1,b=1"},
		{"one VM with two epochs of a cut", map[string][]Point{
			"a": pts(ab, "1:1", "2:1"),
			"b": pts(ab, "1:1"),
		}, ""},
		{"three members, one behind", map[string][]Point{
			"a": pts([]string{"a", "b", "c"}, "1:1", "2:2"),
			"b": pts([]string{"a", "b", "c"}, "1:1", "2:2"),
			"c": pts([]string{"a", "b", "c"}, "1:1"),
		}, "1:a=1,b=1,c=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := summary(Complete("g", tc.points)); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			if got := Complete("other", tc.points); len(got) != 0 {
				t.Errorf("group other: %v", got)
			}
		})
	}
}

func TestKeepFrom(t *testing.T) {
	points := map[string][]Point{
		"a": pts(ab, "1:1", "2:2", "3:-", "4:3", "5:-", "6:4"), // a ahead: cut 4 not complete
		"b": pts(ab, "1:1", "2:2", "3:3"),
		"c": pts([]string{"c"}, "1:-", "2:-"),
	}
	for _, tc := range []struct {
		keep int
		want map[string]uint64
	}{
		{0, map[string]uint64{}},
		{1, map[string]uint64{"a": 4, "b": 3}},
		{2, map[string]uint64{"a": 2, "b": 2}},
		{5, map[string]uint64{"a": 1, "b": 1}},
	} {
		if got := KeepFrom(points, tc.keep); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("keep %d: %v, want %v", tc.keep, got, tc.want)
		}
	}
}

// TestKeepFromBeforeAnyCompletePoint: while no cut of a group is complete,
// the oldest cut that can still complete is kept; a cut some member went
// past without it cannot.
func TestKeepFromBeforeAnyCompletePoint(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b []string
		want map[string]uint64
	}{
		{"b has nothing yet", []string{"1:1"}, nil, map[string]uint64{"a": 1}},
		{"a ahead of b", []string{"1:1", "2:-", "3:2"}, nil, map[string]uint64{"a": 1}},
		{"b went past cuts 1 and 2", []string{"1:1", "2:2"}, []string{"1:3"}, map[string]uint64{"b": 1}},
		{"cut 2 complete", []string{"1:1", "2:2"}, []string{"1:2"}, map[string]uint64{"a": 2, "b": 1}},
	} {
		points := map[string][]Point{"a": pts(ab, tc.a...), "b": pts(ab, tc.b...)}
		if got := KeepFrom(points, 1); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestBeforeAndTime(t *testing.T) {
	gps := Complete("g", map[string][]Point{
		"a": pts(ab, "1:1", "3:2", "5:3"),
		"b": pts(ab, "2:1", "4:2", "6:3"),
	})
	if got := gps[0].Time(); !got.Equal(t0.Add(5 * time.Second)) {
		t.Errorf("time of cut 3 %v, want the earlier member cut", got)
	}
	for _, tc := range []struct {
		at     time.Duration
		cut    uint64
		ok     bool
		aEpoch uint64
	}{
		{10 * time.Second, 3, true, 5},
		{6 * time.Second, 3, true, 5},
		{5 * time.Second, 2, true, 3}, // strictly before
		{2 * time.Second, 1, true, 1},
		{time.Second, 0, false, 0},
		{0, 0, false, 0},
	} {
		g, ok := Before(gps, t0.Add(tc.at))
		if ok != tc.ok || g.Cut != tc.cut || g.Epoch("a") != tc.aEpoch {
			t.Errorf("before +%v: cut %d %v a=%d, want cut %d %v a=%d", tc.at, g.Cut, ok, g.Epoch("a"), tc.cut, tc.ok, tc.aEpoch)
		}
	}
	if gps[0].Epoch("zz") != 0 {
		t.Error("non-member has an epoch")
	}
}

func TestNewest(t *testing.T) {
	other := []string{"x", "y"}
	points := map[string][]Point{
		"a": pts(ab, "1:1", "2:2", "3:3"),
		"b": pts(ab, "1:1", "2:2"),
		"x": pts(other, "1:5"), // y has not committed it: no complete point
	}
	for i := range points["x"] {
		points["x"][i].Tag.Group = "h"
	}
	got := Newest(points)
	if len(got) != 1 || got[0].Group != "g" || got[0].Cut != 2 {
		t.Fatalf("newest %+v, want group g at cut 2 only", got)
	}
}
