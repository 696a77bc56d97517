// Package benchprog holds the data-plane benchmark's harness programs: the
// frame restorer that lets BPF_PROG_RUN repeat a path on the same frame,
// and the MAC-swap baseline, the least an XDP forwarder can do. Only the
// executor's benchmark imports it, so ndd does not embed them.
package benchprog

//go:generate go tool bpf2go -cc clang-14 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package benchprog -type bench_frame bench ../../../bpf/bench.c -- -I../../../bpf

import "github.com/cilium/ebpf"

// Objects are the harness's programs and maps.
type Objects = benchObjects

// Frame is the template frame the restorer copies back before each run.
type Frame = benchBenchFrame

// Load loads the harness into the kernel.
func Load(o *Objects, opts *ebpf.CollectionOptions) error { return loadBenchObjects(o, opts) }
