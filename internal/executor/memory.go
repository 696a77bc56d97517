package executor

import (
	"fmt"
	"sort"

	"github.com/cilium/ebpf"
)

// MapMemory is what the kernel charges one map, as it reports it.
type MapMemory struct {
	Name  string
	Bytes uint64
}

// Memory reports the kernel's memory charge for every map of the data
// plane, largest first. The Maglev rings count once per installed service.
func (b *BPF) Memory() ([]MapMemory, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []MapMemory
	for name, m := range b.mapsByName() {
		info, err := m.Info()
		if err != nil {
			return nil, fmt.Errorf("info of map %s: %w", name, err)
		}
		n, ok := info.Memlock()
		if !ok {
			return nil, fmt.Errorf("kernel reports no memory for map %s", name)
		}
		out = append(out, MapMemory{Name: name, Bytes: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Bytes > out[j].Bytes })
	return out, nil
}

func (b *BPF) mapsByName() map[string]*ebpf.Map {
	o := &b.objs
	return map[string]*ebpf.Map{
		"vips": o.Vips, "vip_bloom": o.VipBloom, "services": o.Services, "rings": o.Rings,
		"backends": o.Backends, "backend_sel": o.BackendSel,
		"svc_index": o.SvcIndex, "svc_index_sel": o.SvcIndexSel,
		"conns": o.Conns, "affinity": o.Affinity, "tx_ports": o.TxPorts,
		"stats_backend": o.StatsBackend, "stats_service": o.StatsService,
		"stats_vip": o.StatsVip, "stats_global": o.StatsGlobal,
	}
}
