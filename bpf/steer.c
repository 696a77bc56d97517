/* Advisor steering: a tc program on the egress of lo that sends an
 * advisor's probe, addressed to a VIP the dispatcher itself holds, to one
 * chosen server instead of the local stack.
 *
 * The advisor marks its socket (SO_MARK) with a mark from a reserved range.
 * The kernel routes the probe to lo because the VIP is local; here, on lo's
 * way out, the mark picks a route: the frame gets the server's MAC and the
 * egress interface's MAC and is redirected out of that interface, the way the
 * XDP dispatcher forwards a client's frame (direct server return). Frames
 * without a mark of the range are not ours and go on untouched. See
 * docs/STEERING.md. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

/* The reserved mark range: a mark m is steering's when
 * (m & steer_mark_mask) == steer_mark_base. Set at load time. */
volatile const __u32 steer_mark_mask = 0xffff0000;
volatile const __u32 steer_mark_base = 0x4e440000;

#define STEER_DEFAULT_ROUTES 4096

/* steer_routes: mark -> where a probe with that mark goes. The two MACs are
 * adjacent and in frame order so that one store rewrites both. */
struct steer_route {
	__u8 dst_mac[6]; /* the server's MAC on the egress network */
	__u8 src_mac[6]; /* the egress interface's own MAC */
	__u32 ifindex;   /* egress interface */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_DEFAULT_ROUTES);
	__type(key, __u32);
	__type(value, struct steer_route);
} steer_routes SEC(".maps");

enum steer_counter {
	STEER_REDIRECTED = 0, /* frames sent to a server */
	STEER_NO_ROUTE,       /* marked frames with no route: dropped */
	STEER_BAD_FRAME,      /* marked frames too short to rewrite: dropped */
	STEER_COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&steer_stats, &which);
	if (v)
		*v += 1;
}

SEC("tc")
int nd_steer(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;

	/* lo carries all local traffic: anything not marked by an advisor
	 * goes on as if this program were not there. TC_ACT_UNSPEC, not
	 * TC_ACT_OK, so that programs attached after this one still run. */
	if ((mark & steer_mark_mask) != steer_mark_base)
		return TC_ACT_UNSPEC;

	/* A marked probe whose route is gone is dropped rather than let
	 * through: reaching the local stack, it could be answered by a local
	 * listener and make a server look healthy. */
	struct steer_route *r = bpf_map_lookup_elem(&steer_routes, &mark);
	if (!r) {
		count(STEER_NO_ROUTE);
		return TC_ACT_SHOT;
	}
	/* The helper, unlike a direct write, copes with a header that is not
	 * in the linear part; it fails on a frame shorter than the two MACs.
	 * The ethertype stays. Checksums cover nothing here, and an L4
	 * checksum left to offload (CHECKSUM_PARTIAL, as lo's are) is still
	 * completed by the egress device or, without offload, by the core. */
	if (skb->len < 14 || bpf_skb_store_bytes(skb, 0, r->dst_mac, 12, 0) < 0) {
		count(STEER_BAD_FRAME);
		return TC_ACT_SHOT;
	}
	count(STEER_REDIRECTED);
	return bpf_redirect(r->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
