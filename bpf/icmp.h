/* ICMP errors about a VIP's flows (fragmentation needed, packet too big):
 * forwarded to the server that owns the flow they quote. */
#ifndef ND_ICMP_H
#define ND_ICMP_H

/* linux/icmp.h drags in libc headers; these are the three values we need. */
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_PKT_TOOBIG 2

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
	struct svc_info svc_copy, *svc = &svc_copy;
	if (svc_find(&sk, svc) < 0)
		goto local;

	struct backend *be = NULL;
	struct flow_snap fv = {};
	__u32 be_id;
	__u32 hash = flow_hash(&p->key, hash_seed);
	if (nd_flow_find(bucket_index(hash, flow_buckets), &p->key, hash, &fv) >= 0)
		be = backend_get(fv.backend, fv.gen, svc->svc_id);
	if (!be) {
		/* No entry: the server the ring names is where the flow went. */
		if (ring_pick(svc->svc_id, hash, &be_id) < 0)
			goto local;
		be = backend_read(be_id);
		if (!be || !(be->flags & BE_F_ACTIVE))
			goto local;
	}
	if (be->flags & BE_F_HELD)
		goto local; /* its server cannot be reached now */
	vs->icmp_forwarded += 1;
	return forward(ctx, be);

local:
	vs->icmp_local += 1;
	return XDP_PASS;
}
#endif /* ND_ICMP_H */
