package statuspage

import (
	"fmt"
	"html/template"
	"io"
	"strconv"
	"strings"
	"time"
)

// Chart geometry, in CSS pixels.
const (
	chartW = 200
	chartH = 56
)

type view struct {
	Title, Now, Refresh, Span string
	RefreshSeconds            int
	Rows                      []rowView
	Trouble                   []rowView // the rows with trouble, for the banner
	Groups                    []groupView
}

type groupView struct {
	Group, Cut, Time, Lag, Members string
}

type rowView struct {
	Name, Group, Epoch, Cut, CutAgo, Lag, Target string
	LagClass                                     string // ok, late or "" when unknown
	Chart                                        *chartView
	Pause, Goodput, Points                       string
	Drill                                        *drillView
	Trouble                                      []string
}

type drillView struct {
	OK                     bool
	Epoch, At, Ago, Detail string
}

type chartView struct {
	W, H    int
	Lines   []string // polyline points, one per unbroken run of samples
	DotX    string   // the newest sample
	DotY    string
	TargetY string // "" without a target
	Base    string // the y of a zero lag
	Top     string // the lag at the top of the chart
	Label   string
	Span    string
	Bottom  int // baseline of the time labels
	Right   int
}

func render(w io.Writer, p Page, hist map[string][]Sample, now time.Time, o Options) error {
	role := p.Role
	if role == "" {
		role = "replication"
	}
	v := view{
		Title: "drsync " + role, Now: clock(now), Refresh: duration(o.Refresh), Span: duration(o.Span),
		RefreshSeconds: max(int(o.Refresh.Seconds()), 1),
	}
	for i := range p.VMs {
		r := row(&p.VMs[i], hist[p.VMs[i].Name], now, o)
		v.Rows = append(v.Rows, r)
		if len(r.Trouble) > 0 {
			v.Trouble = append(v.Trouble, r)
		}
	}
	for _, g := range p.ConsistencyGroups {
		v.Groups = append(v.Groups, groupView{Group: g.Group, Cut: strconv.FormatUint(g.Cut, 10), Time: clock(g.Time()),
			Lag: duration(max(now.Sub(g.Time()), 0)), Members: g.MemberEpochs()})
	}
	return pageTmpl.Execute(w, v)
}

func row(vm *VM, hist []Sample, now time.Time, o Options) rowView {
	r := rowView{Name: vm.Name, Group: vm.Group, Epoch: "–", Cut: "–", Lag: "–", Target: "–", Pause: "–", Goodput: "–", Points: "–", Trouble: vm.Trouble(now)}
	if vm.Epoch > 0 || !vm.Cut.IsZero() {
		r.Epoch = strconv.FormatUint(vm.Epoch, 10)
	}
	if lag, ok := vm.Lag(now); ok {
		r.Cut, r.CutAgo, r.Lag = clock(vm.Cut), duration(lag)+" ago", duration(lag)
		r.LagClass = "ok"
		if vm.RPOTarget > 0 && lag > vm.RPOTarget {
			r.LagClass = "late"
		}
	}
	if vm.RPOTarget > 0 {
		r.Target = duration(vm.RPOTarget)
	}
	if vm.LastPause > 0 {
		r.Pause = pause(vm.LastPause)
	}
	if vm.Goodput > 0 {
		r.Goodput = rate(vm.Goodput)
	}
	if vm.Points > 0 {
		r.Points = strconv.Itoa(vm.Points)
	}
	if d := vm.Drill; d != nil {
		r.Drill = &drillView{OK: d.OK, At: clock(d.At), Ago: duration(max(now.Sub(d.At), 0)) + " ago", Detail: d.Detail}
		if d.Epoch > 0 {
			r.Drill.Epoch = strconv.FormatUint(d.Epoch, 10)
		}
	}
	r.Chart = chart(vm.Name, hist, vm.RPOTarget, now, o)
	return r
}

// chart draws the lag samples of the span ending at now: time across, lag
// up from zero, the target as a dashed line with the band above it tinted.
// Each pixel column shows the largest lag of its samples, so the chart is
// the envelope of the lag's peaks, whatever the span.
func chart(name string, hist []Sample, target time.Duration, now time.Time, o Options) *chartView {
	c := &chartView{W: chartW, H: chartH, Label: fmt.Sprintf("RPO lag of %s over the last %s", name, duration(o.Span)),
		Span: duration(o.Span), Bottom: chartH - 2, Right: chartW - 3}
	top := target * 6 / 5
	for _, s := range hist {
		top = max(top, s.Lag)
	}
	top = niceTop(top)
	c.Top = duration(top)
	const plotTop, plotBottom = 2, chartH - 12 // below: the time labels
	from := now.Add(-o.Span)
	col := func(t time.Time) int { return min(max(int(float64(t.Sub(from))/float64(o.Span)*chartW), 0), chartW-1) }
	y := func(d time.Duration) float64 {
		return plotBottom - float64(min(d, top))/float64(top)*(plotBottom-plotTop)
	}
	c.Base = num(plotBottom)
	if target > 0 {
		c.TargetY = num(y(target))
	}
	// The peak of each column, and when its last sample was.
	type peak struct {
		lag         time.Duration
		first, last time.Time
	}
	var cols []int
	peaks := map[int]*peak{}
	for _, s := range hist {
		x := col(s.At)
		p := peaks[x]
		if p == nil {
			p = &peak{first: s.At}
			peaks[x] = p
			cols = append(cols, x)
		}
		p.lag, p.last = max(p.lag, s.Lag), s.At
	}
	// A gap of more than two steps or columns (no sample: nothing was
	// running) breaks the line rather than drawing a lag nobody saw.
	gap := 2 * max(o.Step, o.Span/chartW)
	var line []string
	for i, x := range cols {
		if i > 0 && peaks[x].first.Sub(peaks[cols[i-1]].last) > gap {
			c.Lines = append(c.Lines, strings.Join(line, " "))
			line = nil
		}
		line = append(line, strconv.Itoa(x)+","+num(y(peaks[x].lag)))
	}
	if len(line) > 0 {
		c.Lines = append(c.Lines, strings.Join(line, " "))
	}
	if n := len(hist); n > 0 {
		c.DotX, c.DotY = strconv.Itoa(col(hist[n-1].At)), num(y(hist[n-1].Lag))
	}
	return c
}

func num(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

// clock formats an instant for people on any site: UTC, to the second.
func clock(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") }

// duration formats d with the two most significant units.
func duration(d time.Duration) string {
	switch {
	case d < 10*time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + " s"
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Seconds()))
	case d < time.Hour:
		return twoUnits(int(d.Minutes()), "min", int(d.Seconds())%60, "s")
	case d < 24*time.Hour:
		return twoUnits(int(d.Hours()), "h", int(d.Minutes())%60, "min")
	}
	return twoUnits(int(d.Hours())/24, "d", int(d.Hours())%24, "h")
}

func twoUnits(major int, mu string, minor int, nu string) string {
	if minor == 0 {
		return fmt.Sprintf("%d %s", major, mu)
	}
	return fmt.Sprintf("%d %s %02d %s", major, mu, minor, nu)
}

// niceTop rounds a chart's top up to a value that reads well on its axis.
func niceTop(d time.Duration) time.Duration {
	for _, n := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
		time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute,
		time.Hour, 2 * time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour} {
		if d <= n {
			return n
		}
	}
	return d.Truncate(24*time.Hour) + 24*time.Hour
}

// pause formats a guest pause, which is milliseconds when all is well.
func pause(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 1, 64) + " ms"
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 0, 64) + " ms"
	}
	return duration(d)
}

// rate formats bytes/s in bits per second, as links are sold.
func rate(bps float64) string {
	b := bps * 8
	for _, u := range []struct {
		div  float64
		name string
	}{{1e9, "Gbit/s"}, {1e6, "Mbit/s"}, {1e3, "kbit/s"}} {
		if b >= u.div {
			return strconv.FormatFloat(b/u.div, 'g', 3, 64) + " " + u.name
		}
	}
	return strconv.FormatFloat(b, 'f', 0, 64) + " bit/s"
}

var pageTmpl = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{{.RefreshSeconds}}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}} status</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2430;background:#f4f6f9}
header{display:flex;align-items:baseline;gap:1em;padding:12px 20px;background:#1d2b3a;color:#fff}
header h1{font-size:18px;margin:0}
header .now{color:#b8c4d2;font-size:13px}
main{padding:16px 20px}
.banner{border:2px solid #c62828;background:#fdecea;border-radius:6px;padding:8px 14px;margin-bottom:14px}
.banner h2{color:#c62828;font-size:15px;margin:0 0 4px}
.banner ul{margin:2px 0 6px 1.2em;padding:0}
.banner .vm{font-weight:600}
.allok{border:2px solid #2e7d32;background:#e8f5e9;color:#1b5e20;border-radius:6px;padding:8px 14px;margin-bottom:14px;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.12)}
th,td{padding:6px 8px;text-align:left;vertical-align:middle;border-bottom:1px solid #e3e7ed}
th{background:#e9edf2;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#4a5565}
tr.bad td:first-child{box-shadow:inset 4px 0 0 #c62828}
td.name{font-weight:600;white-space:nowrap}
td.drill{white-space:nowrap}
td.drill .detail{white-space:normal;min-width:160px;max-width:260px}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
small{color:#6b7685;display:block}
.ok{color:#2e7d32}.late{color:#c62828;font-weight:600}
.pass{display:inline-block;background:#2e7d32;color:#fff;border-radius:4px;padding:1px 7px;font-weight:600}
.fail{display:inline-block;background:#c62828;color:#fff;border-radius:4px;padding:1px 7px;font-weight:600}
svg.chart{display:block;background:#f8fafc;border:1px solid #e3e7ed}
svg.chart polyline{fill:none;stroke:#1e6fd9;stroke-width:1.5}
svg.chart circle{fill:#1e6fd9}
svg.chart .over{fill:#fdecea}
svg.chart .target{stroke:#c62828;stroke-width:1;stroke-dasharray:4 3}
svg.chart text{font-size:9px;fill:#6b7685}
svg.chart .axis{stroke:#c5ccd6;stroke-width:1}
footer{padding:0 20px 16px;color:#6b7685;font-size:12px}
</style>
</head>
<body>
<header><h1>{{.Title}}</h1><span class="now">{{.Now}} · reloads every {{.Refresh}}</span></header>
<main>
{{- if .Trouble}}
<section class="banner" id="trouble">
<h2>{{len .Trouble}} VM(s) need attention</h2>
{{- range .Trouble}}
<div class="vm">{{.Name}}</div>
<ul>{{range .Trouble}}<li>{{.}}</li>{{end}}</ul>
{{- end}}
</section>
{{- else if .Rows}}
<div class="allok">All {{len .Rows}} VM(s) healthy</div>
{{- end}}
<table>
<thead><tr><th>VM</th><th>Group</th><th>Epoch</th><th>Cut</th><th>RPO lag / target</th><th>Lag, last {{.Span}}</th><th>Last pause</th><th>Goodput</th><th>Recovery points</th><th>Last drill</th></tr></thead>
<tbody>
{{- range .Rows}}
<tr class="vm{{if .Trouble}} bad{{end}}" id="vm-{{.Name}}">
<td class="name">{{.Name}}</td>
<td class="group">{{.Group}}</td>
<td class="num epoch">{{.Epoch}}</td>
<td class="num cut">{{.Cut}}{{if .CutAgo}}<small>{{.CutAgo}}</small>{{end}}</td>
<td class="num lag"><span class="{{.LagClass}}">{{.Lag}}</span> / {{.Target}}</td>
<td>{{with .Chart}}<svg class="chart" width="{{.W}}" height="{{.H}}" viewBox="0 0 {{.W}} {{.H}}" role="img" aria-label="{{.Label}}"><title>{{.Label}}</title>
{{- if .TargetY}}<rect class="over" x="0" y="0" width="{{.W}}" height="{{.TargetY}}"/><line class="target" x1="0" x2="{{.W}}" y1="{{.TargetY}}" y2="{{.TargetY}}"/>{{end}}
<line class="axis" x1="0" x2="{{.W}}" y1="{{.Base}}" y2="{{.Base}}"/>
{{- range .Lines}}<polyline points="{{.}}"/>{{end}}
{{- if .DotX}}<circle cx="{{.DotX}}" cy="{{.DotY}}" r="2.5"/>{{end}}<text x="3" y="10">{{.Top}}</text><text x="3" y="{{.Bottom}}">{{.Span}} ago</text><text x="{{.Right}}" y="{{.Bottom}}" text-anchor="end">now</text></svg>{{end}}</td>
<td class="num pause">{{.Pause}}</td>
<td class="num goodput">{{.Goodput}}</td>
<td class="num points">{{.Points}}</td>
<td class="drill">{{with .Drill}}{{if .OK}}<span class="pass">passed</span>{{else}}<span class="fail">FAILED</span>{{end}}{{if .Epoch}} epoch {{.Epoch}}{{end}}<small>{{.At}}<br>{{.Ago}}</small>{{if and .Detail (not .OK)}}<small class="detail">{{.Detail}}</small>{{end}}{{else}}–{{end}}</td>
</tr>
{{- else}}
<tr><td colspan="10">No VM is configured.</td></tr>
{{- end}}
</tbody>
</table>
{{- if .Groups}}
<h2>Consistency groups</h2>
<table id="groups">
<thead><tr><th>Group</th><th>Newest complete group point</th><th>Cut at</th><th>RPO lag</th><th>Members resume</th></tr></thead>
<tbody>
{{- range .Groups}}
<tr class="cgroup" id="cgroup-{{.Group}}"><td class="name">{{.Group}}</td><td class="num">cut {{.Cut}}</td><td class="num">{{.Time}}</td><td class="num lag">{{.Lag}}</td><td>{{.Members}}</td></tr>
{{- end}}
</tbody>
</table>
{{- end}}
</main>
<footer>Read-only. Times in UTC. Prometheus metrics at <a href="metrics">metrics</a>.</footer>
</body>
</html>
`))
