package agent

import (
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestProcSample(t *testing.T) {
	p := Proc{Root: "testdata/proc"}
	load, err := p.Load1()
	if err != nil || load != 0.42 {
		t.Errorf("Load1 = %v, %v; want 0.42", load, err)
	}
	mem, err := p.Memory()
	if err != nil || mem != 25 {
		t.Errorf("Memory = %v, %v; want 25 ((8000000-6000000)/8000000)", mem, err)
	}
	cpu, err := p.CPU()
	// user..steal = 1000+50+300+8000+100+20+30+0; guest fields excluded.
	if err != nil || cpu != (CPUTimes{Idle: 8100, Total: 9500}) {
		t.Errorf("CPU = %+v, %v; want idle 8100 total 9500", cpu, err)
	}
	tcp, err := p.TCPEstablished()
	if err != nil || tcp != 3 {
		t.Errorf("TCPEstablished = %v, %v; want 3 (two IPv4, one IPv6 in state 01)", tcp, err)
	}
	procs, err := p.Processes()
	if err != nil || procs != 3 {
		t.Errorf("Processes = %v, %v; want 3 (dirs 1, 42, 1234)", procs, err)
	}
}

func TestCPUBusy(t *testing.T) {
	prev := CPUTimes{Idle: 8100, Total: 9500}
	got, err := CPUBusy(prev, CPUTimes{Idle: 8100 + 150, Total: 9500 + 200})
	if err != nil || got != 25 {
		t.Errorf("CPUBusy = %v, %v; want 25", got, err)
	}
	if _, err := CPUBusy(prev, prev); !errors.Is(err, errNoCPUChange) {
		t.Errorf("CPUBusy with no change: err %v, want errNoCPUChange", err)
	}
	if _, err := CPUBusy(prev, CPUTimes{Idle: 1, Total: 2}); err == nil {
		t.Error("CPUBusy accepted counters going backwards")
	}
}

// TestProcLive runs every collector on the machine's own /proc.
func TestProcLive(t *testing.T) {
	p := Proc{Root: "/proc"}
	load, err := p.Load1()
	if err != nil || load < 0 {
		t.Errorf("Load1 = %v, %v", load, err)
	}
	mem, err := p.Memory()
	if err != nil || mem <= 0 || mem >= 100 {
		t.Errorf("Memory = %v, %v; want within (0, 100)", mem, err)
	}
	c1, err := p.CPU()
	if err != nil || c1.Total == 0 || c1.Idle > c1.Total {
		t.Errorf("CPU = %+v, %v", c1, err)
	}
	if _, err := p.TCPEstablished(); err != nil {
		t.Errorf("TCPEstablished: %v", err)
	}
	procs, err := p.Processes()
	if err != nil || procs < 1 {
		t.Errorf("Processes = %v, %v; want at least this test", procs, err)
	}

	s := newSampler(p)
	s.sample()
	m, e := map[string]float64{}, map[string]string{}
	s.fill(m, e)
	for _, name := range []string{MetricLoad1, MetricMemory, MetricTCPEstablished, MetricProcesses} {
		if _, ok := m[name]; !ok {
			t.Errorf("live sample: no %s (error %q)", name, e[name])
		}
	}
	if _, ok := e[MetricCPU]; !ok {
		t.Errorf("first sample has a CPU value %v; utilisation needs two samples", m[MetricCPU])
	}
}

// TestSamplerCPU feeds the sampler two /proc/stat snapshots.
func TestSamplerCPU(t *testing.T) {
	root := copyProc(t)
	s := newSampler(Proc{Root: root})
	s.sample()
	writeFile(t, filepath.Join(root, "stat"), "cpu  1100 50 350 8100 150 20 30 0 0 0\n")
	s.sample()
	m, e := map[string]float64{}, map[string]string{}
	s.fill(m, e)
	// delta: user 100, system 50, idle 100, iowait 50 -> busy 150/300.
	if got, ok := m[MetricCPU]; !ok || got != 50 {
		t.Errorf("cpu = %v (error %q), want 50", got, e[MetricCPU])
	}
	if m[MetricMemory] != 25 || m[MetricTCPEstablished] != 3 {
		t.Errorf("sample metrics %v", m)
	}
}

func TestProcMalformed(t *testing.T) {
	cases := []struct {
		name, file, content string
		read                func(Proc) (float64, error)
	}{
		{"empty loadavg", "loadavg", "", Proc.Load1},
		{"garbage loadavg", "loadavg", "abc 1 2\n", Proc.Load1},
		{"NaN loadavg", "loadavg", "NaN 1 2\n", Proc.Load1},
		{"no MemAvailable", "meminfo", "MemTotal: 100 kB\n", Proc.Memory},
		{"zero MemTotal", "meminfo", "MemTotal: 0 kB\nMemAvailable: 0 kB\n", Proc.Memory},
		{"available above total", "meminfo", "MemTotal: 10 kB\nMemAvailable: 20 kB\n", Proc.Memory},
		{"bad MemTotal", "meminfo", "MemTotal: x kB\nMemAvailable: 1 kB\n", Proc.Memory},
		{"tcp without header", "net/tcp", "   0: 0100007F:1F90 0100007F:C350 01\n", Proc.TCPEstablished},
		{"tcp short line", "net/tcp", "  sl  local_address rem_address   st\n  0: x\n", Proc.TCPEstablished},
		{"stat no cpu line", "stat", "intr 1\n", func(p Proc) (float64, error) { _, err := p.CPU(); return 0, err }},
		{"stat bad field", "stat", "cpu 1 2 x 4 5\n", func(p Proc) (float64, error) { _, err := p.CPU(); return 0, err }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := copyProc(t)
			writeFile(t, filepath.Join(root, c.file), c.content)
			if v, err := c.read(Proc{Root: root}); err == nil {
				t.Errorf("accepted %q: %v", c.content, v)
			}
		})
	}
	t.Run("missing tcp6", func(t *testing.T) {
		root := copyProc(t)
		os.Remove(filepath.Join(root, "net/tcp6"))
		if v, err := (Proc{Root: root}).TCPEstablished(); err != nil || v != 2 {
			t.Errorf("without tcp6: %v, %v; want 2", v, err)
		}
	})
	t.Run("missing root", func(t *testing.T) {
		p := Proc{Root: filepath.Join(t.TempDir(), "none")}
		if _, err := p.Processes(); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Processes on a missing root: %v", err)
		}
		if _, err := p.Load1(); err == nil {
			t.Error("Load1 on a missing root succeeded")
		}
	})
}

func TestProcFinite(t *testing.T) {
	if finite(math.Inf(1)) || finite(math.NaN()) || !finite(1e300) {
		t.Error("finite is wrong")
	}
}

// copyProc copies testdata/proc into a temporary directory the test may
// change.
func copyProc(t *testing.T) string {
	t.Helper()
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS("testdata/proc")); err != nil {
		t.Fatal(err)
	}
	return dst
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
