package executor

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

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

// mapsByName lists every named map of the data plane (the .rodata and .bss
// of a load are not pinned, so not listed), read from the generated struct
// so that a new map cannot be forgotten here.
func (b *BPF) mapsByName() map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	v := reflect.ValueOf(&b.objs.dispatchMaps).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Tag.Get("ebpf")
		if m, ok := v.Field(i).Interface().(*ebpf.Map); ok && m != nil && name != "" && !strings.HasPrefix(name, ".") {
			out[name] = m
		}
	}
	return out
}
