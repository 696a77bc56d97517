package main

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// A chart of per-second series in stacked panels over a shared time axis,
// written as plain SVG with no dependency.

type svgSeries struct {
	Name   string
	Color  string
	Dashed bool
	Points []float64 // one per second; NaN leaves a gap
}

type svgPanel struct {
	Title string
	Unit  string  // after the y labels
	YMax  float64 // the top of the y axis; 0 takes the data's maximum
	// LogMin, if more than 0, draws the y axis on a log scale from
	// LogMin to YMax, with a tick at each power of ten.
	LogMin float64
	Series []svgSeries
}

type svgBand struct {
	From, To float64 // seconds
	Label    string
	Fill     string
}

// Geometry of a chart, in SVG user units.
const (
	svgWidth   = 900
	svgPanelH  = 220
	svgMarginL = 70
	svgMarginR = 150
	svgMarginT = 60
	svgGap     = 50
)

// svgPalette colours the servers: server1 (the one slowed down) red.
var svgPalette = []string{"#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"}

func svgText(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// writeSVG draws panels one under the other over seconds [0, seconds).
func writeSVG(w io.Writer, title string, seconds int, bands []svgBand, panels []svgPanel) error {
	bw := bufio.NewWriter(w)
	height := svgMarginT + len(panels)*(svgPanelH+svgGap) + 10
	plotW := float64(svgWidth - svgMarginL - svgMarginR)
	xOf := func(t float64) float64 { return svgMarginL + plotW*t/math.Max(float64(seconds), 1) }
	fmt.Fprintf(bw, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgWidth, height, svgWidth, height)
	fmt.Fprintf(bw, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgWidth, height)
	fmt.Fprintf(bw, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", svgMarginL, svgText(title))
	for pi, p := range panels {
		top := float64(svgMarginT + pi*(svgPanelH+svgGap))
		bottom := top + svgPanelH
		ymax := p.YMax
		if ymax <= 0 {
			for _, s := range p.Series {
				if m := maxOf(s.Points); !math.IsNaN(m) {
					ymax = math.Max(ymax, m)
				}
			}
			ymax = niceCeil(ymax)
		}
		yOf := func(v float64) float64 { return bottom - svgPanelH*math.Min(v, ymax)/ymax }
		ticks := []float64{0, ymax / 4, ymax / 2, 3 * ymax / 4, ymax}
		if p.LogMin > 0 {
			lo, hi := math.Log10(p.LogMin), math.Log10(ymax)
			yOf = func(v float64) float64 {
				v = math.Min(math.Max(v, p.LogMin), ymax)
				return bottom - svgPanelH*(math.Log10(v)-lo)/(hi-lo)
			}
			ticks = nil
			for e := math.Ceil(lo); e <= hi; e++ {
				ticks = append(ticks, math.Pow(10, e))
			}
		}
		for _, b := range bands {
			fmt.Fprintf(bw, `<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="%s"/>`+"\n",
				xOf(b.From), top, xOf(b.To)-xOf(b.From), svgPanelH, b.Fill)
			if pi == 0 {
				fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" font-size="10" fill="#555">%s</text>`+"\n", xOf(b.From)+3, top+12, svgText(b.Label))
			}
		}
		fmt.Fprintf(bw, `<text x="%d" y="%.1f" font-weight="bold">%s</text>`+"\n", svgMarginL, top-6, svgText(p.Title))
		for _, v := range ticks {
			y := yOf(v)
			fmt.Fprintf(bw, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", svgMarginL, y, xOf(float64(seconds)), y)
			fmt.Fprintf(bw, `<text x="%d" y="%.1f" text-anchor="end">%s%s</text>`+"\n", svgMarginL-5, y+4, formatTick(v), svgText(p.Unit))
		}
		for t := 0; t <= seconds; t += tickStep(seconds) {
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%ds</text>`+"\n", xOf(float64(t)), bottom+14, t)
		}
		fmt.Fprintf(bw, `<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="none" stroke="#333"/>`+"\n", svgMarginL, top, plotW, svgPanelH)
		for si, s := range p.Series {
			var d strings.Builder
			pen := false
			for t, v := range s.Points {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					pen = false
					continue
				}
				cmd := "L"
				if !pen {
					cmd = "M"
				}
				fmt.Fprintf(&d, "%s%.1f %.1f ", cmd, xOf(float64(t)+0.5), yOf(v))
				pen = true
			}
			dash := ""
			if s.Dashed {
				dash = ` stroke-dasharray="5 3"`
			}
			if d.Len() > 0 {
				fmt.Fprintf(bw, `<path d="%s" fill="none" stroke="%s" stroke-width="1.5"%s/>`+"\n", strings.TrimSpace(d.String()), s.Color, dash)
			}
			ly := top + 14 + float64(si)*16
			lx := float64(svgWidth - svgMarginR + 10)
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", lx, ly-4, lx+18, ly-4, s.Color, dash)
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+22, ly, svgText(s.Name))
		}
	}
	fmt.Fprintln(bw, `</svg>`)
	return bw.Flush()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p*1.0000001 {
			return m * p
		}
	}
	return 10 * p
}

func formatTick(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func tickStep(seconds int) int {
	for _, s := range []int{5, 10, 20, 30, 60, 120, 300, 600} {
		if seconds/s <= 12 {
			return s
		}
	}
	return 1200
}

// A bar chart: groups of bars (a scenario's balancers), one panel per
// value (mean, p99.9), on log scales from 1 to 10,000.
type svgBar struct {
	Name   string
	Values [2]float64 // NaN: no bar
}

type svgGroup struct {
	Name string
	Bars []svgBar
}

func writeBars(w io.Writer, title string, panels []string, groups []svgGroup) error {
	bw := bufio.NewWriter(w)
	const lo, hi = 0.0, 4.0 // log10 of 1 and 10,000
	height := svgMarginT + len(panels)*(svgPanelH+svgGap) + 10
	plotW := float64(svgWidth - svgMarginL - svgMarginR)
	fmt.Fprintf(bw, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgWidth, height, svgWidth, height)
	fmt.Fprintf(bw, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgWidth, height)
	fmt.Fprintf(bw, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", svgMarginL, svgText(title))
	names := []string{}
	for _, g := range groups {
		for _, b := range g.Bars {
			if !slices.Contains(names, b.Name) {
				names = append(names, b.Name)
			}
		}
	}
	groupW := plotW / math.Max(float64(len(groups)), 1)
	barW := groupW * 0.8 / math.Max(float64(len(names)), 1)
	for pi, title := range panels {
		top := float64(svgMarginT + pi*(svgPanelH+svgGap))
		bottom := top + svgPanelH
		yOf := func(v float64) float64 {
			l := math.Min(math.Max(math.Log10(math.Max(v, 1e-9)), lo), hi)
			return bottom - svgPanelH*(l-lo)/(hi-lo)
		}
		fmt.Fprintf(bw, `<text x="%d" y="%.1f" font-weight="bold">%s</text>`+"\n", svgMarginL, top-6, svgText(title+", log scale"))
		for e := lo; e <= hi; e++ {
			y := yOf(math.Pow(10, e))
			fmt.Fprintf(bw, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", svgMarginL, y, svgMarginL+plotW, y)
			fmt.Fprintf(bw, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", svgMarginL-5, y+4, formatTick(math.Pow(10, e)))
		}
		fmt.Fprintf(bw, `<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="none" stroke="#333"/>`+"\n", svgMarginL, top, plotW, svgPanelH)
		for gi, g := range groups {
			x0 := svgMarginL + float64(gi)*groupW + groupW*0.1
			for _, b := range g.Bars {
				v := b.Values[min(pi, 1)]
				if math.IsNaN(v) || math.IsInf(v, 0) {
					continue
				}
				k := slices.Index(names, b.Name)
				y := yOf(v)
				fmt.Fprintf(bw, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %.1f</title></rect>`+"\n",
					x0+float64(k)*barW, y, barW*0.9, bottom-y, svgPalette[(k+1)%len(svgPalette)], svgText(g.Name), svgText(b.Name), v)
			}
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%s</text>`+"\n", x0+groupW*0.4, bottom+14, svgText(g.Name))
		}
		for k, n := range names {
			ly := top + 14 + float64(k)*16
			lx := float64(svgWidth - svgMarginR + 10)
			fmt.Fprintf(bw, `<rect x="%.1f" y="%.1f" width="14" height="10" fill="%s"/>`+"\n", lx, ly-9, svgPalette[(k+1)%len(svgPalette)])
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+20, ly, svgText(n))
		}
	}
	fmt.Fprintln(bw, `</svg>`)
	return bw.Flush()
}
