package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/drsync/drsync/sender"
	"github.com/drsync/drsync/statusreport"
)

// progressRedraw limits how often the bar is redrawn: the sender reports
// every item, which can be thousands of times a second.
const progressRedraw = 200 * time.Millisecond

// progressBar draws a one-line, \r-updated bar on a terminal for the epochs
// in flight (one segment per VM). It is also the io.Writer of the logger, so
// that a log line clears the bar, is printed, and the bar is redrawn below
// it instead of the two mangling each other.
type progressBar struct {
	mu    sync.Mutex
	w     io.Writer
	now   func() time.Time
	vms   map[string]*barState
	shown int // width of the bar currently on screen, 0 if none
	drawn time.Time
}

type barState struct {
	p     sender.Progress
	start time.Time
}

func newProgressBar(w io.Writer, now func() time.Time) *progressBar {
	return &progressBar{w: w, now: now, vms: map[string]*barState{}}
}

// update records vm's progress; it is the sender's Progress callback.
func (b *progressBar) update(vm string, p sender.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	st := b.vms[vm]
	if st == nil || st.p.Epoch != p.Epoch {
		st = &barState{start: now}
		b.vms[vm] = st
	}
	st.p = p
	if now.Sub(b.drawn) >= progressRedraw || p.SentBytes == p.AllBytes && !p.Planning {
		b.redraw()
	}
}

// done removes vm from the bar, once its epoch ended either way.
func (b *progressBar) done(vm string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.vms, vm)
	b.redraw()
}

// Write prints a log line above the bar.
func (b *progressBar) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.clear()
	n, err := b.w.Write(p)
	b.redraw()
	return n, err
}

func (b *progressBar) clear() {
	if b.shown > 0 {
		fmt.Fprintf(b.w, "\r%s\r", strings.Repeat(" ", b.shown))
		b.shown = 0
	}
}

func (b *progressBar) redraw() {
	b.drawn = b.now()
	if len(b.vms) == 0 {
		b.clear()
		return
	}
	var parts []string
	for _, vm := range sortedKeys(b.vms) {
		st := b.vms[vm]
		parts = append(parts, statusreport.ProgressSegment(vm, st.p, st.start, b.drawn, len(b.vms) == 1))
	}
	line := strings.Join(parts, " | ")
	pad := ""
	if b.shown > len(line) {
		pad = strings.Repeat(" ", b.shown-len(line))
	}
	fmt.Fprintf(b.w, "\r%s%s", line, pad)
	b.shown = len(line)
}
