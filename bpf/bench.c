/* Benchmark harness for BPF_PROG_RUN with repeat. The kernel runs the
 * program again on the frame it already rewrote, so without help every
 * iteration after the first would measure another path. bench_restore puts
 * the template frame back (and, for new-flow runs, a fresh source port) and
 * tail-calls the program under test; mac_swap is the baseline: the least an
 * XDP forwarder can do. Not used in production. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define BENCH_MAX_FRAME 128

struct bench_frame {
	__u32 len;
	__u16 port_off; /* offset of the source port to vary, or 0 */
	__u16 addr_off; /* offset of the source address's last 2 bytes */
	__u8 data[BENCH_MAX_FRAME];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_frame);
} bench_template SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_seq SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_target SEC(".maps");

SEC("xdp")
int bench_restore(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bench_frame *f = bpf_map_lookup_elem(&bench_template, &zero);
	if (!f)
		return XDP_ABORTED;

	/* Copy the template back with plain loads and stores, 8 bytes at a
	 * time: a helper call here would cost more than the programs under
	 * test. Templates are padded to a multiple of 8 bytes. */
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = f->len;
	if (len == 0 || len > BENCH_MAX_FRAME || len % 8 || data + len != data_end)
		return XDP_ABORTED;
#pragma unroll
	for (int i = 0; i < BENCH_MAX_FRAME / 8; i++) {
		if (i * 8 >= len)
			break;
		__u64 *dst = data + i * 8;
		if ((void *)(dst + 1) > data_end)
			return XDP_ABORTED;
		*dst = *(__u64 *)&f->data[i * 8];
	}

	if (f->port_off) {
		__u32 *seq = bpf_map_lookup_elem(&bench_seq, &zero);
		if (!seq)
			return XDP_ABORTED;
		*seq += 1;
		/* A new source port each time, and the source address moves on
		 * every 65,536 ports, so that no run ever revisits a flow. */
		__u16 port = bpf_htons(*seq & 0xffff);
		__u16 addr = bpf_htons(*seq >> 16);
		__u16 *p = data + (f->port_off & 0x7f);
		__u16 *a = data + (f->addr_off & 0x7f);
		if ((void *)(p + 1) > data_end || (void *)(a + 1) > data_end)
			return XDP_ABORTED;
		*p = port;
		*a = addr;
	}

	bpf_tail_call(ctx, &bench_target, 0);
	return XDP_ABORTED;
}

SEC("xdp")
int mac_swap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
