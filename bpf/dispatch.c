/* nd's executor: the XDP entry point. parse -> look up -> pick -> forward.
 *
 * Forwarding never touches IP or transport headers: only the Ethernet
 * addresses change, and servers that hold the VIP on a loopback alias answer
 * clients directly. See docs/ARCHITECTURE.md for the packet walk. */
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "types.h"
#include "maps.h"
#include "parse.h"
#include "hash.h"

/* linux/icmp.h drags in libc headers; these are the three values we need. */
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_PKT_TOOBIG 2

/* Load-time constants, set by internal/executor before loading. */
volatile const __u32 ring_size = DEFAULT_RING_SIZE;
volatile const __u32 hash_seed = 0;
volatile const __u64 idle_timeout_ns = 300ull * 1000000000ull;

/* last_seen is refreshed at most this often: a write per packet would bounce
 * the entry's cache line between CPUs for nothing. */
#define REFRESH_NS 1000000000ull
#define NS_PER_SEC 1000000000ull

static __always_inline void count_global(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&stats_global, &which);
	if (c)
		*c += 1;
}

static __always_inline struct vip_stats *vip_lookup(struct packet *p)
{
	struct vip_key k = {};

	k.addr = p->key.dst;
	k.family = p->key.family;
	struct vip_info *vi = bpf_map_lookup_elem(&vips, &k);
	if (!vi)
		return NULL;
	__u32 id = vi->vip_id;
	return bpf_map_lookup_elem(&stats_vip, &id);
}

/* backend_get returns the backend if it still is the one a flow or an
 * affinity record named: same slot generation and still in use. */
static __always_inline struct backend *backend_get(__u32 id, __u32 gen, __u32 svc_id)
{
	struct backend *be = bpf_map_lookup_elem(&backends, &id);

	if (!be || !(be->flags & BE_F_ACTIVE) || be->gen != gen || be->svc_id != svc_id)
		return NULL;
	return be;
}

/* ring_pick indexes the service's Maglev ring with the flow hash. */
static __always_inline int ring_pick(__u32 svc_id, const struct flow_key *key, __u32 *be_id)
{
	void *ring = bpf_map_lookup_elem(&rings, &svc_id);
	if (!ring)
		return -1;

	__u32 slot = flow_hash(key, hash_seed) % ring_size;
	__u32 *id = bpf_map_lookup_elem(ring, &slot);
	if (!id || *id == RING_EMPTY)
		return -1;
	*be_id = *id;
	return 0;
}

/* pick chooses a server for a flow the connection table does not know:
 * first the client's sticky server, if the service has affinity and the
 * server may take new flows, then the Maglev ring. */
static __always_inline struct backend *pick(struct svc_info *svc, struct packet *p, __u64 now,
					    __u32 *be_id)
{
	struct affinity_key ak = {};
	struct affinity_val *av = NULL;
	struct backend *be;
	int sticky = svc->flags & SVC_F_AFFINITY;

	if (sticky) {
		ak.client = p->key.src;
		ak.svc_id = svc->svc_id;
		ak.family = p->key.family;
		av = bpf_map_lookup_elem(&affinity, &ak);
		if (av && now - av->last_seen <= (__u64)svc->sticky_secs * NS_PER_SEC) {
			be = backend_get(av->backend, av->gen, svc->svc_id);
			if (be && !(be->flags & BE_F_QUIESCED)) {
				*be_id = av->backend;
				av->last_seen = now;
				return be;
			}
		}
	}

	if (ring_pick(svc->svc_id, &p->key, be_id) < 0)
		return NULL;
	be = bpf_map_lookup_elem(&backends, be_id);
	if (!be || !(be->flags & BE_F_ACTIVE) || be->svc_id != svc->svc_id)
		return NULL;

	if (sticky) {
		struct affinity_val nv = {
			.backend = *be_id,
			.gen = be->gen,
			.last_seen = now,
		};
		bpf_map_update_elem(&affinity, &ak, &nv, BPF_ANY);
	}
	return be;
}

/* forward rewrites the Ethernet addresses and nothing else. */
static __always_inline int forward(struct xdp_md *ctx, struct backend *be)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if (be->flags & BE_F_LOCAL)
		return XDP_PASS;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;

	__builtin_memcpy(eth->h_dest, be->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, be->src_mac, ETH_ALEN);
	if (be->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect_map(&tx_ports, be->ifindex, 0);
}

static __always_inline void count_backend(__u32 be_id, __u64 bytes, int new_flow, int closed)
{
	struct backend_stats *bs = bpf_map_lookup_elem(&stats_backend, &be_id);

	if (!bs)
		return;
	bs->packets += 1;
	bs->bytes += bytes;
	bs->new_flows += new_flow;
	bs->closed += closed;
}

static __always_inline void refresh_affinity(struct svc_info *svc, struct packet *p,
					     struct flow_val *fv, __u64 now)
{
	struct affinity_key ak = {};

	ak.client = p->key.src;
	ak.svc_id = svc->svc_id;
	ak.family = p->key.family;
	struct affinity_val *av = bpf_map_lookup_elem(&affinity, &ak);
	if (av && av->backend == fv->backend && av->gen == fv->gen)
		av->last_seen = now;
}

static __always_inline int dispatch_l4(struct xdp_md *ctx, struct packet *p, struct svc_info *svc)
{
	__u64 bytes = ctx->data_end - ctx->data;
	__u64 now = bpf_ktime_get_coarse_ns();
	int is_tcp = p->key.proto == IPPROTO_TCP;
	int syn = is_tcp && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	int closing = is_tcp && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST));
	struct backend *be = NULL;
	__u32 be_id = 0;
	int new_flow = 0, closed = 0;

	struct flow_val *fv = bpf_map_lookup_elem(&conns, &p->key);
	if (fv) {
		be_id = fv->backend;
		be = backend_get(be_id, fv->gen, svc->svc_id);
		if (be && now - fv->last_seen > idle_timeout_ns) {
			/* Idle past the timeout: its server stops counting it. */
			if (!(fv->flags & FLOW_F_CLOSING)) {
				struct backend_stats *bs = bpf_map_lookup_elem(&stats_backend, &be_id);
				if (bs)
					bs->expired += 1;
			}
			be = NULL;
		} else if (be && syn && (fv->flags & FLOW_F_CLOSING)) {
			/* The client reuses a closed tuple: a new connection. */
			be = NULL;
		}
	}

	if (be) {
		if (now - fv->last_seen > REFRESH_NS) {
			fv->last_seen = now;
			if (svc->flags & SVC_F_AFFINITY)
				refresh_affinity(svc, p, fv, now);
		}
		if (closing && !(fv->flags & FLOW_F_CLOSING)) {
			fv->flags |= FLOW_F_CLOSING;
			closed = 1;
		}
	} else {
		be = pick(svc, p, now, &be_id);
		if (!be) {
			struct svc_stats *ss = bpf_map_lookup_elem(&stats_service, &svc->svc_id);
			if (ss)
				ss->no_backend += 1;
			return XDP_DROP;
		}
		struct flow_val nv = {
			.backend = be_id,
			.gen = be->gen,
			.last_seen = now,
			.flags = closing ? FLOW_F_CLOSING : 0,
		};
		bpf_map_update_elem(&conns, &p->key, &nv, BPF_ANY);
		new_flow = 1;
		closed = closing;
	}

	count_backend(be_id, bytes, new_flow, closed);
	struct svc_stats *ss = bpf_map_lookup_elem(&stats_service, &svc->svc_id);
	if (ss) {
		ss->packets += 1;
		ss->bytes += bytes;
	}
	return forward(ctx, be);
}

/* icmp_inner_flow reads the header quoted in an ICMP error (a packet the
 * server sent from VIP:port to the client) and turns it into the key of the
 * client's flow. Returns 0 when it found one. */
static __always_inline int icmp4_inner_flow(void *inner, void *data_end, struct packet *p)
{
	struct iphdr *ip = inner;

	if ((void *)(ip + 1) > data_end)
		return -1;
	__u32 hlen = (*(__u8 *)ip & 0xf) * 4;
	if (hlen < sizeof(*ip))
		return -1;
	if (ip->saddr != p->key.dst.addr[0])
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;

	__be16 *ports = inner + hlen;
	if ((void *)(ports + 2) > data_end)
		return -1;

	p->key.src.addr[0] = ip->daddr;
	p->key.sport = ports[1];
	p->key.dport = ports[0];
	p->key.proto = ip->protocol;
	return 0;
}

static __always_inline int icmp6_inner_flow(void *inner, void *data_end, struct packet *p)
{
	struct ipv6hdr *ip6 = inner;

	if ((void *)(ip6 + 1) > data_end)
		return -1;
	const __u32 *quoted_src = (const __u32 *)&ip6->saddr;
	if (quoted_src[0] != p->key.dst.addr[0] || quoted_src[1] != p->key.dst.addr[1] ||
	    quoted_src[2] != p->key.dst.addr[2] || quoted_src[3] != p->key.dst.addr[3])
		return -1;
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		return -1;

	__be16 *ports = (void *)(ip6 + 1);
	if ((void *)(ports + 2) > data_end)
		return -1;

	__builtin_memcpy(&p->key.src, &ip6->daddr, 16);
	p->key.sport = ports[1];
	p->key.dport = ports[0];
	p->key.proto = ip6->nexthdr;
	return 0;
}

/* dispatch_icmp: echo and everything else go to the dispatcher's own stack;
 * "fragmentation needed" and "packet too big" go to the server that owns
 * the flow they are about, so path-MTU discovery works with direct server
 * return (the server sent the big packet, not us). */
static __always_inline int dispatch_icmp(struct xdp_md *ctx, struct packet *p, struct vip_stats *vs)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *icmp = p->l4;
	int found;

	if ((void *)(icmp + 8) > data_end)
		goto local;

	if (p->key.family == ND_AF_INET) {
		if (icmp[0] != ICMP_DEST_UNREACH || icmp[1] != ICMP_FRAG_NEEDED)
			goto local;
		found = icmp4_inner_flow(icmp + 8, data_end, p);
	} else {
		if (icmp[0] != ICMPV6_PKT_TOOBIG)
			goto local;
		found = icmp6_inner_flow(icmp + 8, data_end, p);
	}
	if (found < 0)
		goto local;

	struct svc_key sk = {};
	sk.addr = p->key.dst;
	sk.port = p->key.dport;
	sk.proto = p->key.proto;
	sk.family = p->key.family;
	struct svc_info *svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc)
		goto local;

	struct backend *be = NULL;
	__u32 be_id;
	struct flow_val *fv = bpf_map_lookup_elem(&conns, &p->key);
	if (fv) {
		be_id = fv->backend;
		be = backend_get(be_id, fv->gen, svc->svc_id);
	}
	if (!be) {
		/* No entry: the server the ring names is where the flow went. */
		if (ring_pick(svc->svc_id, &p->key, &be_id) < 0)
			goto local;
		be = bpf_map_lookup_elem(&backends, &be_id);
		if (!be || !(be->flags & BE_F_ACTIVE))
			goto local;
	}
	vs->icmp_forwarded += 1;
	return forward(ctx, be);

local:
	vs->icmp_local += 1;
	return XDP_PASS;
}

SEC("xdp")
int nd_dispatch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet p = {};
	struct vip_stats *vs;

	int rc = parse_frame(data, data_end, &p);
	switch (rc) {
	case PARSE_NOT_IP:
		count_global(G_NOT_IP);
		return XDP_PASS;
	case PARSE_BAD_L3:
		count_global(G_MALFORMED);
		return XDP_PASS;
	case PARSE_OK: {
		struct svc_key sk = {};
		sk.addr = p.key.dst;
		sk.port = p.key.dport;
		sk.proto = p.key.proto;
		sk.family = p.key.family;
		struct svc_info *svc = bpf_map_lookup_elem(&services, &sk);
		if (svc)
			return dispatch_l4(ctx, &p, svc);
		break;
	}
	}

	/* Not a defined service: is it for one of our VIPs at all? */
	vs = vip_lookup(&p);
	if (!vs) {
		if (rc == PARSE_BAD_L4)
			count_global(G_MALFORMED);
		count_global(G_PASSED);
		return XDP_PASS;
	}

	switch (rc) {
	case PARSE_ICMP:
		return dispatch_icmp(ctx, &p, vs);
	case PARSE_FRAGMENT:
		vs->fragments += 1;
		return XDP_DROP;
	case PARSE_BAD_L4:
		count_global(G_MALFORMED);
		return XDP_DROP;
	default: /* PARSE_OK on an undefined port, or another protocol */
		vs->filtered += 1;
		return XDP_DROP;
	}
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
