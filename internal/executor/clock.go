package executor

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The data plane keeps time in jiffies (see now_ns in bpf/dispatch.c),
// which BPF programs read for free but whose rate, CONFIG_HZ, user space
// is not told. jiffyNanos measures it.

// kernelHZ lists the tick rates Linux can be built with.
var kernelHZ = []float64{100, 250, 300, 1000}

// jiffyNanos returns the length of a jiffy in nanoseconds, found by reading
// jiffies twice across 60 ms of wall-clock time.
func jiffyNanos() (uint64, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "nd_jiffies",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.FnJiffies64.Call(),
			asm.Return(), // the low 32 bits are plenty for a 60 ms delta
		},
		License: "Dual MIT/GPL",
	})
	if err != nil {
		return 0, fmt.Errorf("load jiffies probe: %w", err)
	}
	defer prog.Close()
	frame := make([]byte, 14)
	read := func() (uint32, time.Time, error) {
		j, err := prog.Run(&ebpf.RunOptions{Data: frame})
		return j, time.Now(), err
	}
	j0, t0, err := read()
	if err != nil {
		return 0, fmt.Errorf("read jiffies: %w", err)
	}
	time.Sleep(60 * time.Millisecond)
	j1, t1, err := read()
	if err != nil {
		return 0, fmt.Errorf("read jiffies: %w", err)
	}
	rate := float64(j1-j0) / t1.Sub(t0).Seconds()
	best := kernelHZ[0]
	for _, hz := range kernelHZ {
		if math.Abs(hz-rate) < math.Abs(best-rate) {
			best = hz
		}
	}
	return uint64(1e9 / best), nil
}

// kernelNow reads the data plane's clock through clock_now.
func (b *BPF) kernelNow() uint64 {
	in := make([]byte, 14)
	out := make([]byte, 14)
	if _, err := b.objs.ClockNow.Run(&ebpf.RunOptions{Data: in, DataOut: out}); err != nil {
		b.log.Error("read data plane clock", "err", err)
		return 0
	}
	return binary.NativeEndian.Uint64(out)
}
