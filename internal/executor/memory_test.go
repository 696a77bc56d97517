package executor

import "testing"

// TestMemoryFootprint checks the figures docs/ARCHITECTURE.md states: a
// 10M-flow connection table costs 64 bytes a flow (610 MiB), and 4,096
// servers well under a megabyte (plus their per-CPU counters).
func TestMemoryFootprint(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 10_000_000, MaxServers: 4096})
	mem, err := h.x.Memory()
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]uint64{}
	var total uint64
	for _, m := range mem {
		by[m.Name] = m.Bytes
		total += m.Bytes
		t.Logf("%-14s %13d bytes", m.Name, m.Bytes)
	}
	t.Logf("total %d bytes", total)
	if c := by["conns"]; c < 10_000_000*64 || c > 10_000_000*65 {
		t.Errorf("10M-flow table costs %d bytes, documented as 64 bytes a flow", c)
	}
	if s := by["backends"]; s > 1<<20 {
		t.Errorf("4,096 servers cost %d bytes, documented as under 1 MiB", s)
	}
	if total-by["conns"] > 32<<20 {
		t.Errorf("maps other than the flow table cost %d bytes, documented as under 32 MiB", total-by["conns"])
	}
}
