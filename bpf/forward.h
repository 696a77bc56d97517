/* Forwarding: only the Ethernet addresses change (direct server return). */
#ifndef ND_FORWARD_H
#define ND_FORWARD_H

/* frame_for_us says whether a frame is addressed to the interface it arrived
 * on. A NIC drops unicast frames for other MACs before XDP sees them, but
 * not in promiscuous mode (a packet capture, a bridge port), and a veth or a
 * switch flooding unknown unicast delivers them too: a standby dispatcher,
 * or any host on the segment, would then forward a copy of every frame the
 * active one gets. The stack drops such frames (PACKET_OTHERHOST), so they
 * are passed to it, as they would be without nd. An interface user space
 * has not described is not checked. */
static __always_inline int frame_for_us(struct xdp_md *ctx, const void *data, const void *data_end)
{
	const struct ethhdr *eth = data;
	__u32 idx = ctx->ingress_ifindex;
	struct if_mac *m = bpf_map_lookup_elem(&if_macs, &idx);

	if (!m || !m->known)
		return 1;
	if ((void *)(eth + 1) > data_end)
		return 0;
	return *(const __u32 *)eth->h_dest == *(const __u32 *)m->addr &&
	       *(const __u16 *)(eth->h_dest + 4) == *(const __u16 *)(m->addr + 4);
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
#endif /* ND_FORWARD_H */
