/* Looking up what a packet is for: its VIP's counters, its service (index
 * and filters) and the server slots a flow or a ring names. */
#ifndef ND_LOOKUP_H
#define ND_LOOKUP_H

/* vip_lookup finds the counters of the VIP a packet is for: in vip_index,
 * the VIP's slot by its address hash ah (an inlined array read), else in
 * the vips hash (a VIP whose slot another took, or one being rewritten). */
static __always_inline struct vip_stats *vip_lookup(struct packet *p, __u32 ah)
{
	__u32 slot = scale(ah, vip_index_slots);
	struct vip_slot *s = bpf_map_lookup_elem(&vip_index, &slot);
	if (s && s->used && s->family == p->key.family && s->addr.addr[0] == p->key.dst.addr[0] &&
	    s->addr.addr[1] == p->key.dst.addr[1] && s->addr.addr[2] == p->key.dst.addr[2] &&
	    s->addr.addr[3] == p->key.dst.addr[3]) {
		__u32 id = s->vip_id;
		return bpf_map_lookup_elem(&stats_vip, &id);
	}

	struct vip_key k = {};

	k.addr = p->key.dst;
	k.family = p->key.family;
	struct vip_info *vi = bpf_map_lookup_elem(&vips, &k);
	if (!vi)
		return NULL;
	__u32 id = vi->vip_id;
	return bpf_map_lookup_elem(&stats_vip, &id);
}

/* backend_read returns the copy of server slot id in use. */
static __always_inline struct backend *backend_read(__u32 id)
{
	__u32 *sel = bpf_map_lookup_elem(&backend_sel, &id);
	if (!sel)
		return NULL;
	__u32 copy = id * 2 + (*sel & 1);
	return bpf_map_lookup_elem(&backends, &copy);
}

/* backend_get returns the backend if it still is the one a flow or an
 * affinity record named: same slot generation and still in use. */
static __always_inline struct backend *backend_get(__u32 id, __u32 gen, __u32 svc_id)
{
	struct backend *be = backend_read(id);

	if (!be || !(be->flags & BE_F_ACTIVE) || be->gen != gen || be->svc_id != svc_id)
		return NULL;
	return be;
}

/* svc_find copies out the service of a VIP:port/protocol: from the index,
 * probing at most SVC_PROBES slots, or from the services hash when the
 * index says a service overflowed it. A copy, not a pointer, so that the
 * verifier meets one state after it, whichever map the service came from. */
static __always_inline int svc_find(const struct svc_key *k, struct svc_info *out)
{
	__u32 zero = 0;
	struct svc_info *found = NULL;
	__u32 *sel = bpf_map_lookup_elem(&svc_index_sel, &zero);
	if (!sel)
		return -1;

	const __u64 *kw = (const __u64 *)k;
	__u32 base = (*sel & 1) * svc_index_slots;
	__u32 home = scale(svc_hash(k), svc_index_slots);
	int overflow = 0;

	for (int i = 0; i < SVC_PROBES; i++) {
		__u32 idx = home + i;
		if (idx >= svc_index_slots)
			idx -= svc_index_slots;
		idx += base;
		struct svc_slot *s = bpf_map_lookup_elem(&svc_index, &idx);
		if (!s || !(s->flags & SVC_SLOT_USED))
			break;
		overflow |= s->flags & SVC_SLOT_OVERFLOW;
		const __u64 *sw = (const __u64 *)&s->key;
		if (sw[0] == kw[0] && sw[1] == kw[1] && sw[2] == kw[2]) {
			*out = s->info;
			return 0;
		}
	}
	if (overflow)
		found = bpf_map_lookup_elem(&services, k);
	if (!found)
		return -1;
	*out = *found;
	return 0;
}

/* vip_filter_hit is false only for addresses that are no VIP. *ah gets
 * the address's hash, which svc_filter_hit reuses. */
static __always_inline int vip_filter_hit(const struct flow_key *k, __u32 *ah)
{
	__u32 zero = 0;
	struct vip_filter *f = bpf_map_lookup_elem(&vip_bloom, &zero);
	__u32 h = addr_hash(&k->dst, k->family);
	*ah = h;
	if (!f)
		return 1;
	return (f->bits[(h >> 6) & (VIP_FILTER_BITS / 64 - 1)] >> (h & 63)) & 1;
}

/* svc_filter_hit is false only for a (VIP, port, protocol) that no service
 * defines: such a packet skips the connection table. */
static __always_inline int svc_filter_hit(const struct flow_key *k, __u32 ah)
{
	__u32 zero = 0;
	struct vip_filter *f = bpf_map_lookup_elem(&svc_bloom, &zero);
	if (!f)
		return 1;
	__u32 bit = svc_filter_bit(ah, k->dport, k->proto);
	return (f->bits[(bit >> 6) & (VIP_FILTER_BITS / 64 - 1)] >> (bit & 63)) & 1;
}
#endif /* ND_LOOKUP_H */
