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
#include "consts.h"
#include "parse.h"
#include "hash.h"
#include "flow.h"

/* linux/icmp.h drags in libc headers; these are the three values we need. */
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_PKT_TOOBIG 2


/* now_ns is the data plane's clock: jiffies, which the verifier inlines as
 * one load, in nanoseconds. A few milliseconds of resolution is plenty for
 * idle timeouts, and bpf_ktime_get_coarse_ns costs 20-40 ns a packet. */
static __always_inline __u64 now_ns(void)
{
	return bpf_jiffies64() * jiffy_ns;
}

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

/* flow_report_on says whether user space listens for flow events. */
static __always_inline int flow_report_on(void)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&flow_events_on, &zero);

	return on && *on;
}

/* nd_flow_report puts one struct flow_event in flow_events, or counts it
 * lost when the ring is full. kind_flags is FLOW_EV_* << 8 | FLOW_F_*
 * (a global function takes five arguments at most). Global, so that the
 * verifier checks the ring's reserve and submit once. */
__noinline int nd_flow_report(const struct flow_key *key, const struct backend *be, __u32 be_id,
			      __u32 kind_flags, __u64 now)
{
	if (!key || !be)
		return -1;
	struct flow_event *ev = bpf_ringbuf_reserve(&flow_events, sizeof(*ev), 0);
	if (!ev) {
		count_global(G_EVENTS_LOST);
		return -1;
	}
	__builtin_memcpy(&ev->key, key, sizeof(*key));
	__builtin_memcpy(&ev->server, &be->addr, sizeof(ev->server));
	ev->ts = now;
	ev->backend = be_id;
	ev->gen = be->gen;
	ev->kind = kind_flags >> 8;
	ev->flags = kind_flags & FLOW_FLAGS_MASK;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

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

/* ring_pick indexes the service's Maglev ring with the flow hash. */
static __always_inline int ring_pick(__u32 svc_id, __u32 hash, __u32 *be_id)
{
	void *ring = bpf_map_lookup_elem(&rings, &svc_id);
	if (!ring)
		return -1;
	__u32 zero = 0;
	__u16 *slots = bpf_map_lookup_elem(ring, &zero);
	if (!slots)
		return -1;

	__u32 slot = ring_slot(hash, ring_size);
	if (slot >= ring_size)
		return -1;
	__u16 id = slots[slot];
	if (id == RING_EMPTY)
		return -1;
	*be_id = id;
	return 0;
}

/* active_add moves a server's open-flow count (server_active). */
static __always_inline void active_add(__u32 be_id, __s64 delta)
{
	__s64 *n = bpf_map_lookup_elem(&server_active, &be_id);
	if (n)
		__sync_fetch_and_add(n, delta);
}

/* active_read is a server's open-flow count as the scheduler uses it: never
 * below 0, and small enough that a product with a 32-bit weight fits in 64
 * bits. */
static __always_inline __u64 active_read(__u32 be_id)
{
	__s64 *n = bpf_map_lookup_elem(&server_active, &be_id);
	if (!n)
		return 0;
	__s64 v = *(volatile __s64 *)n;
	if (v < 0)
		return 0;
	if (v > 0xffffffffll)
		return 0xffffffffull;
	return v;
}

/* p2c_usable: a candidate that may take a new flow of the service. */
static __always_inline int p2c_usable(const struct backend *be, __u32 svc_id)
{
	return be && (be->flags & (BE_F_ACTIVE | BE_F_QUIESCED)) == BE_F_ACTIVE &&
	       be->svc_id == svc_id;
}

/* nd_p2c_pick is the p2c scheduler: weighted power of two choices. Two
 * candidates come from the service's Maglev ring at the slots of two
 * independent hashes of the flow (so each is drawn with its weight's
 * share), and the one with fewer open flows for its weight wins:
 * a wins when active_a / weight_a <= active_b / weight_b, compared as
 * active_a * weight_b <= active_b * weight_a. The weights thus set the
 * long-run shares while the counts steer new flows away from a server that
 * holds more than its share right now. A candidate that may take no new
 * flow (quiesced, retired: the ring may lag a weight change by a moment)
 * loses to one that may; when neither may, the first stands, as the Maglev
 * path would have it. Returns the server slot, or -1 when the ring is empty.
 * A global function, checked once by the verifier. */
__noinline int nd_p2c_pick(__u32 svc_id, __u32 hash_a, __u32 hash_b)
{
	void *ring = bpf_map_lookup_elem(&rings, &svc_id);
	if (!ring)
		return -1;
	__u32 zero = 0;
	__u16 *slots = bpf_map_lookup_elem(ring, &zero);
	if (!slots)
		return -1;

	__u32 slot_a = ring_slot(hash_a, ring_size);
	__u32 slot_b = ring_slot(hash_b, ring_size);
	if (slot_a >= ring_size || slot_b >= ring_size)
		return -1;
	__u32 a = slots[slot_a];
	__u32 b = slots[slot_b];
	if (a == RING_EMPTY)
		return -1; /* a ring is either all empty or has no empty slot */
	if (b == a || b == RING_EMPTY)
		return a;

	struct backend *ba = backend_read(a);
	struct backend *bb = backend_read(b);
	if (!p2c_usable(bb, svc_id))
		return a;
	if (!p2c_usable(ba, svc_id))
		return b;
	__u64 load_a = active_read(a) * bb->weight;
	__u64 load_b = active_read(b) * ba->weight;
	return load_a <= load_b ? a : b;
}

/* recent_picks is how many new flows a server slot took over about the
 * last PICK_WINDOW_NS: this window's count plus the part of the last
 * window's that the current one has not yet covered. */
static __always_inline __u64 recent_picks(struct pick_window *w, __u32 epoch, __u64 now)
{
	__u32 e = w->epoch;
	__u64 cur = w->cur, prev = w->prev;
	if (e != epoch) {
		/* Nothing counted yet in this window. */
		prev = e == epoch - 1 ? cur : 0;
		cur = 0;
	}
	__u64 left = (1ull << PICK_WINDOW_SHIFT) - (now & ((1ull << PICK_WINDOW_SHIFT) - 1));
	return cur + ((prev * left) >> PICK_WINDOW_SHIFT);
}

/* count_pick records a new flow given to a server slot in its window. */
static __always_inline void count_pick(__u32 id, __u32 epoch)
{
	struct pick_window *w = bpf_map_lookup_elem(&server_picks, &id);
	if (!w)
		return;
	if (w->epoch != epoch) {
		w->prev = w->epoch == epoch - 1 ? w->cur : 0;
		w->cur = 0;
		w->epoch = epoch;
	}
	__sync_fetch_and_add(&w->cur, 1);
}

/* nd_member_held is the figure the delay scheduler scores a server slot
 * by: the flows it holds, or, when its recent new flows would hold
 * PICK_CHARGE_FACTOR times that (plus one) at a typical flow's length
 * (charge), that figure. A global function, checked once by the verifier
 * whatever the caller's loop. */
__noinline __u64 nd_member_held(__u32 id, __u64 charge, __u32 epoch, __u64 now)
{
	__u64 held = active_read(id);
	if (!charge)
		return held;
	struct pick_window *w = bpf_map_lookup_elem(&server_picks, &id);
	if (!w)
		return held;
	/* recent picks < 2^33, charge < 2^32: no overflow; the charged
	 * figure is in 1/65536ths of a flow. */
	__u64 charged = recent_picks(w, epoch, now) * charge;
	if (charged > (((held + 1) * PICK_CHARGE_FACTOR) << 16))
		held = charged >> 16;
	return held;
}

/* nd_delay_pick is the delay scheduler: least expected delay over every
 * member of the service. A member's score is held x per_flow + base (see
 * struct member); the lowest wins. Ties go to the server the Maglev ring
 * names for the flow when it is among them, else to the first in an order
 * that starts at a place the flow's hash chooses: idle servers, all equal,
 * then share new flows by their weights. Among servers as fast as their
 * peers this is least connections per unit of weight; a server the manager
 * finds slower costs its delay factor per flow and even idle, so it takes
 * new flows only while its peers are busier by that much. A server's held
 * figure is what it holds, or, when its recent new flows would hold several
 * times that at a typical flow's length, that figure (see server_picks):
 * least connections would otherwise feed every new flow to a server that
 * fails them at once. Returns the server slot, or -1 when the service has
 * no member list. A global function, checked once by the verifier. */
__noinline int nd_delay_pick(__u32 svc_id, __u32 hash, __u64 now)
{
	__u32 *sel = bpf_map_lookup_elem(&members_sel, &svc_id);
	if (!sel)
		return -1;
	__u32 k = 2 * svc_id + (*sel & 1);
	struct member_list *ms = bpf_map_lookup_elem(&svc_members, &k);
	if (!ms)
		return -1;
	__u32 n = ms->n;
	if (n == 0 || n > MEMBERS_MAX)
		return -1;
	__u64 charge = ms->charge;
	__u32 epoch = now >> PICK_WINDOW_SHIFT;
	__u32 ring_id = RING_EMPTY;
	ring_pick(svc_id, hash, &ring_id);

	__u32 i = ((__u64)hash * n) >> 32;
	__u64 best = ~0ull;
	int best_id = -1;
	for (__u32 j = 0; j < MEMBERS_MAX; j++) {
		if (j >= n)
			break;
		if (i >= MEMBERS_MAX)
			break;
		struct member *m = &ms->m[i];
		__u32 id = m->id;
		__u64 score = nd_member_held(id, charge, epoch, now) * (__u64)m->per_flow + m->base;
		if (score < best || (score == best && id == ring_id)) {
			best = score;
			best_id = id;
		}
		if (++i >= n)
			i = 0;
	}
	if (best_id >= 0 && charge)
		count_pick(best_id, epoch);
	return best_id;
}

/* pick chooses a server for a flow the connection table does not know:
 * first the client's sticky server, if the service has affinity and the
 * server may take new flows, then the Maglev ring, or for a p2c service
 * the better of two ring picks, or for a delay service the member with the
 * least expected delay. */
static __always_inline struct backend *pick(struct svc_info *svc, struct packet *p, __u32 hash,
					    __u64 now, __u32 *be_id, int schedule)
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

	if (schedule && (svc->flags & SVC_F_DELAY)) {
		int id = nd_delay_pick(svc->svc_id, hash, now);
		if (id < 0)
			return NULL;
		*be_id = id;
	} else if (schedule && (svc->flags & SVC_F_P2C)) {
		int id = nd_p2c_pick(svc->svc_id, hash, flow_hash(&p->key, hash_seed ^ P2C_SEED));
		if (id < 0)
			return NULL;
		*be_id = id;
	} else if (ring_pick(svc->svc_id, hash, be_id) < 0) {
		return NULL;
	}
	be = backend_read(*be_id);
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

static __always_inline void count_backend(__u32 be_id, __u64 bytes, int new_flow, int closed,
					  int halfopen)
{
	struct backend_stats *bs = bpf_map_lookup_elem(&stats_backend, &be_id);

	if (!bs)
		return;
	bs->packets += 1;
	bs->bytes += bytes;
	bs->new_flows += new_flow;
	bs->closed += closed;
	bs->halfopen_opened += halfopen;
}

static __always_inline void refresh_affinity(__u32 svc_id, struct packet *p,
					     struct flow_snap *fv, __u64 now)
{
	struct affinity_key ak = {};

	ak.client = p->key.src;
	ak.svc_id = svc_id;
	ak.family = p->key.family;
	struct affinity_val *av = bpf_map_lookup_elem(&affinity, &ak);
	if (av && av->backend == fv->backend && av->gen == fv->gen)
		av->last_seen = now;
}

/* halfopen_add moves a server's half-open count (server_halfopen, this
 * CPU's share). */
static __always_inline void halfopen_add(__u32 be_id, __s64 delta)
{
	__s64 *n = bpf_map_lookup_elem(&server_halfopen, &be_id);
	if (n)
		*n += delta;
}

/* mark_pressure notes that a new flow displaced a live half-open flow or
 * found no way it may take. */
static __always_inline void mark_pressure(__u64 now)
{
	__u32 zero = 0;
	__u64 *t = bpf_map_lookup_elem(&table_pressure, &zero);
	if (t)
		*t = now;
}

/* count_gone charges a flow that left the table without closing (idle, or
 * pushed out of a full bucket) to its server, if the server is still it:
 * a half-open flow leaves the half-open count, an established one is
 * counted expired and leaves the open-flow count, a closing one was
 * counted out when it closed. */
static __always_inline void count_gone(__u32 be_id, __u32 gen, __u32 flags)
{
	if (flags & FLOW_F_CLOSING)
		return;
	struct backend *be = backend_read(be_id);
	if (!be || !(be->flags & BE_F_ACTIVE) || be->gen != gen)
		return;
	if (flags & FLOW_F_HALFOPEN) {
		halfopen_add(be_id, -1);
		return;
	}
	struct backend_stats *bs = bpf_map_lookup_elem(&stats_backend, &be_id);
	if (bs)
		bs->expired += 1;
	if (be->flags & BE_F_P2C)
		active_add(be_id, -1);
}

/* count_out takes a flow out of its server's counts when user space
 * removes or replaces it, if the server is still the flow's. */
static __always_inline void count_out(__u32 be_id, __u32 gen, __u32 flags)
{
	if (flags & FLOW_F_CLOSING)
		return;
	struct backend *be = backend_read(be_id);
	if (!be || !(be->flags & BE_F_ACTIVE) || be->gen != gen)
		return;
	if (flags & FLOW_F_HALFOPEN)
		halfopen_add(be_id, -1);
	else if (be->flags & BE_F_P2C)
		active_add(be_id, -1);
}

/* count_in adds an established flow to its server's open-flow count. */
static __always_inline void count_in(__u32 be_id, __u32 gen)
{
	struct backend *be = backend_read(be_id);
	if (be && (be->flags & (BE_F_ACTIVE | BE_F_P2C)) == (BE_F_ACTIVE | BE_F_P2C) && be->gen == gen)
		active_add(be_id, 1);
}

/* flow_lookup is where a TCP or UDP packet to a VIP starts: its table
 * bucket and, if the table knows the flow, the way and what it holds;
 * otherwise (snap.v_*) the way a new flow would take. */
struct flow_lookup {
	struct flow_bucket *bucket;
	__u32 idx; /* the bucket's index */
	__u32 hash;
	int way;
	struct flow_snap snap;
};

/* reuse_way makes the flow's own way the one its new pick takes, with the
 * class that says how its old contents are counted out. */
static __always_inline void reuse_way(struct flow_lookup *fl, __u32 class, __u32 seq)
{
	fl->snap.v_way = fl->way;
	fl->snap.v_class = class;
	fl->snap.v_seq = seq;
	fl->snap.v_flags = fl->snap.flags;
	fl->snap.v_backend = fl->snap.backend;
	fl->snap.v_gen = fl->snap.gen;
}

/* dispatch_established forwards a packet of a flow the table knows, without
 * even looking its service up: the way names the server, the server its
 * service. Returns -1 when the packet must be dispatched as a new flow: no
 * entry, its server left, it idled out, a SYN reuses a closed tuple, or a
 * half-open flow's server may take no new flow. Every change of a way's
 * state is made under its count, from the count the lookup read, so that
 * of two CPUs only one moves a counter, and never on a flow that another
 * CPU has meanwhile put in the way. */
static __always_inline int dispatch_established(struct xdp_md *ctx, struct packet *p,
						struct flow_lookup *fl, __u64 now, __u64 bytes)
{
	if (fl->way < 0)
		return -1;

	__u32 be_id = fl->snap.backend;
	__u32 flags = fl->snap.flags;
	struct backend *be = backend_read(be_id);
	if (!be || !(be->flags & BE_F_ACTIVE) || be->gen != fl->snap.gen) {
		reuse_way(fl, VICTIM_FREE, fl->snap.seq); /* its server left: nothing counts it */
		return -1;
	}
	if (expire_nodest && !(flags & (FLOW_F_HALFOPEN | FLOW_F_CLOSING)) && (be->flags & BE_F_QUIESCED)) {
		/* expire_nodest_conn: an established flow of a server taken
		 * out leaves it (counted expired) and is dispatched anew. */
		reuse_way(fl, VICTIM_EXPIRED, fl->snap.seq);
		return -1;
	}
	int is_tcp = p->key.proto == IPPROTO_TCP;
	__u8 tcp_flags = is_tcp ? p->tcp_flags : 0;
	/* The common case first: a packet of an established or closing flow
	 * seen within the refresh interval (so not idle: every timeout is at
	 * least a second), that changes nothing. */
	if (!(flags & FLOW_F_HALFOPEN) && !(tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST)) &&
	    !flow_idle(now, fl->snap.last_seen, REFRESH_NS)) {
		count_backend(be_id, bytes, 0, 0, 0);
		return forward(ctx, be);
	}
	if (flow_idle(now, fl->snap.last_seen, flow_timeout(flags))) {
		/* Idle past its timeout: take it out once, and only then stop
		 * counting it, so that a packet the new pick drops cannot count
		 * it again. */
		if (nd_flow_update(fl->idx, fl->way, fl->snap.seq, FLOW_CLEAR_ALL, 0) == 0) {
			count_gone(be_id, fl->snap.gen, flags);
			reuse_way(fl, VICTIM_FREE, fl->snap.seq + 2);
		} else {
			fl->snap.v_class = VICTIM_NONE;
		}
		return -1;
	}
	int syn = (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	int fin = tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST);
	if (syn && (flags & FLOW_F_CLOSING)) {
		reuse_way(fl, VICTIM_EXPIRED, fl->snap.seq); /* a closed tuple reused */
		return -1;
	}
	if (syn && (flags & FLOW_F_HALFOPEN) && (be->flags & BE_F_QUIESCED)) {
		/* A SYN retransmitted to a server taken out: picked again. */
		reuse_way(fl, VICTIM_EXPIRED, fl->snap.seq);
		return -1;
	}

	__u32 set = 0, clear = 0;
	__u64 seen = 0;
	int opened = 0, closed = 0, left_halfopen = 0;
	if (flow_idle(now, fl->snap.last_seen, REFRESH_NS)) {
		seen = now;
		if (flags & FLOW_F_STICKY)
			refresh_affinity(be->svc_id, p, &fl->snap, now);
	}
	if (flags & FLOW_F_HALFOPEN) {
		if (fin) {
			/* Given up before the handshake completed: closing. */
			set = FLOW_F_CLOSING;
			clear = FLOW_F_HALFOPEN;
			left_halfopen = 1;
		} else if (!syn) {
			/* The handshake's ACK: established. */
			clear = FLOW_F_HALFOPEN;
			seen = now;
			opened = left_halfopen = 1;
		}
	} else if (fin && !(flags & FLOW_F_CLOSING)) {
		set = FLOW_F_CLOSING;
		closed = 1;
	}
	if (set | clear | seen) {
		if (nd_flow_update(fl->idx, fl->way, fl->snap.seq, FLOW_SET_CLEAR(set, clear), seen) < 0)
			opened = closed = left_halfopen = 0; /* another CPU changed it */
	}
	if (left_halfopen)
		halfopen_add(be_id, -1);
	count_backend(be_id, bytes, opened, closed, 0);
	if (opened | closed) {
		if (be->flags & BE_F_P2C)
			active_add(be_id, opened ? 1 : -1);
		if (flow_report_on()) {
			__u32 kind = opened ? FLOW_EV_OPENED : FLOW_EV_CLOSED;
			nd_flow_report(&p->key, be, be_id, kind << 8 | ((flags | set) & ~clear), now);
		}
	}
	return forward(ctx, be);
}

/* dispatch_new picks a server for a packet the table has no live flow for
 * and forwards the packet. What it may record depends on the packet: a SYN
 * (or a UDP packet) takes a free or expired way or displaces the oldest
 * half-open flow, and is recorded half-open (UDP: established); a stray
 * packet of an unknown TCP flow (an ACK, data) takes only a free or expired
 * way, half-open, and is established by its next packet; a FIN or RST of an
 * unknown flow is forwarded and leaves nothing. No packet displaces an
 * established or closing flow: a full bucket forwards the new flow by its
 * pick alone. */
static __always_inline int dispatch_new(struct xdp_md *ctx, struct packet *p, struct svc_info *svc,
					struct flow_lookup *fl, __u64 now, __u64 bytes)
{
	int is_tcp = p->key.proto == IPPROTO_TCP;
	int fin = is_tcp && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST));
	int opener = !is_tcp || (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	__u32 be_id = 0;
	__u32 class = fl->snap.v_class;
	/* Only an opener the table will remember goes to the service's
	 * scheduler (p2c, delay): its choice depends on the moment, and a
	 * later packet that finds no entry is picked again. Every other
	 * packet, an opener with no way it may take or a stray packet of a
	 * flow the table does not know, goes where the Maglev ring says,
	 * which a packet of the same flow finds again. */
	int recorded = !fin && class <= (opener ? VICTIM_HALFOPEN : VICTIM_EXPIRED);

	struct backend *be = pick(svc, p, fl->hash, now, &be_id, opener && recorded);
	if (!be) {
		struct svc_stats *ss = bpf_map_lookup_elem(&stats_service, &svc->svc_id);
		if (ss)
			ss->no_backend += 1;
		return XDP_DROP;
	}

	if (!recorded) {
		if (!fin) {
			if (opener) {
				count_global(G_OPENER_UNRECORDED);
				if (class != VICTIM_NONE)
					mark_pressure(now);
			} else {
				count_global(G_STRAY_UNRECORDED);
			}
		}
		count_backend(be_id, bytes, 0, 0, 0);
		return forward(ctx, be);
	}

	struct flow_store_args a = {
		.key = p->key,
		.last_seen = now,
		.hash = fl->hash,
		.backend = be_id,
		.gen = be->gen,
		.flags = FLOW_F_VALID,
		.way = fl->snap.v_way,
		.expect = fl->snap.v_seq,
	};
	if (is_tcp)
		a.flags |= FLOW_F_HALFOPEN;
	if (svc->flags & SVC_F_AFFINITY)
		a.flags |= FLOW_F_STICKY;
	int opened = 0, halfopen = 0;
	if (nd_flow_store(fl->idx, &a) < 0) {
		count_global(G_FLOW_BUSY);
		/* Not remembered after all (another CPU was writing the way):
		 * where the ring says, as for any flow the table lacks. */
		__u32 ring_id;
		if (opener && (svc->flags & (SVC_F_DELAY | SVC_F_P2C)) && ring_pick(svc->svc_id, fl->hash, &ring_id) == 0) {
			struct backend *rb = backend_read(ring_id);
			if (rb && (rb->flags & BE_F_ACTIVE) && rb->svc_id == svc->svc_id) {
				be = rb;
				be_id = ring_id;
			}
		}
	} else {
		int moved = is_tcp;
		if (class == VICTIM_HALFOPEN) {
			/* A half-open flow displaced by a new one: no generation
			 * check (a stale slot's count is corrected when user
			 * space reconciles), and nothing to move when both are
			 * the same server's. */
			if (fl->snap.v_backend == be_id && is_tcp)
				moved = 0;
			else
				halfopen_add(fl->snap.v_backend, -1);
			count_global(G_HALFOPEN_EVICTED);
			mark_pressure(now);
		} else if (class != VICTIM_FREE) {
			count_gone(fl->snap.v_backend, fl->snap.v_gen, fl->snap.v_flags);
		}
		if (is_tcp) {
			halfopen = 1;
			if (moved)
				halfopen_add(be_id, 1);
		} else {
			opened = 1;
			if (be->flags & BE_F_P2C)
				active_add(be_id, 1);
			if (flow_report_on())
				nd_flow_report(&p->key, be, be_id, FLOW_EV_OPENED << 8 | a.flags, now);
		}
	}

	count_backend(be_id, bytes, opened, 0, halfopen);
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
	}

	/* Most traffic on a host that is not ours costs one array read. */
	__u32 ah;
	if (!vip_filter_hit(&p.key, &ah)) {
		if (rc == PARSE_BAD_L4)
			count_global(G_MALFORMED);
		count_global(G_PASSED);
		return XDP_PASS;
	}

	if (!frame_for_us(ctx, data, data_end)) {
		count_global(G_OTHER_HOST);
		return XDP_PASS;
	}

	/* A port no service defines skips the connection table. */
	if (rc == PARSE_OK && svc_filter_hit(&p.key, ah)) {
		__u64 bytes = data_end - data;
		__u64 now = now_ns();
		struct flow_lookup fl; /* every field is written before it is read */

		fl.hash = flow_hash(&p.key, hash_seed);
		fl.idx = bucket_index(fl.hash, flow_buckets);
		fl.bucket = bpf_map_lookup_elem(&conns, &fl.idx);
		if (!fl.bucket)
			return XDP_ABORTED;
		/* Ask for the whole bucket before reading any of it: the key a
		 * lookup compares, or the way a new flow writes, then arrives
		 * with the head line instead of one memory round trip later. */
		prefetch_bucket(fl.bucket);
		int r = nd_flow_lookup(fl.idx, &p.key, fl.hash, &fl.snap, now);
		fl.way = r;
		if (r < 0 || (r & FLOW_MISS)) {
			fl.way = -1;
			if (r < 0)
				fl.snap.v_class = VICTIM_NONE;
		}
		int act = dispatch_established(ctx, &p, &fl, now, bytes);
		if (act >= 0)
			return act;

		struct svc_key sk = {};
		sk.addr = p.key.dst;
		sk.port = p.key.dport;
		sk.proto = p.key.proto;
		sk.family = p.key.family;
		struct svc_info svc;
		if (svc_find(&sk, &svc) == 0)
			return dispatch_new(ctx, &p, &svc, &fl, now, bytes);
	}

	/* Not a defined service: is it for one of our VIPs at all? */
	vs = vip_lookup(&p, ah);
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

/* nd_flow_apply applies one struct flow_op: user space's way to write the
 * connection table under the same sequence counts as the data plane.
 * Returns XDP_PASS when done, XDP_DROP when a deleted flow was not there,
 * XDP_ABORTED when the input was bad or the way was busy (try again).
 * Global, so that the verifier checks it once for every caller. */
__noinline int nd_flow_apply(const struct flow_op *op)
{
	struct flow_key key;
	struct flow_snap snap = {};

	if (!op)
		return XDP_ABORTED;
	__builtin_memcpy(&key, &op->key, sizeof(key));

	__u32 hash = flow_hash(&key, hash_seed);
	__u32 idx = bucket_index(hash, flow_buckets);
	struct flow_bucket *bucket = bpf_map_lookup_elem(&conns, &idx);
	if (!bucket)
		return XDP_ABORTED;
	int way = nd_flow_find(idx, &key, hash, &snap);
	__u64 now = now_ns();

	if (op->op == FLOW_OP_DELETE) {
		if (way < 0)
			return XDP_DROP;
		if (nd_flow_update(idx, way, snap.seq, FLOW_CLEAR_ALL, 0) < 0)
			return XDP_ABORTED;
		count_out(snap.backend, snap.gen, snap.flags);
		return XDP_PASS;
	}
	if (op->op != FLOW_OP_UPSERT)
		return XDP_ABORTED;

	int replaced = way >= 0;
	__u32 expect = snap.seq;
	if (way < 0) {
		flow_victim_in(bucket, now, &snap);
		if (snap.v_class == VICTIM_NONE)
			return XDP_ABORTED;
		way = snap.v_way;
		expect = snap.v_seq;
	}
	struct flow_store_args a = {
		.key = key,
		.last_seen = op->idle_ns < now ? now - op->idle_ns : 0,
		.hash = hash,
		.backend = op->backend,
		.gen = op->gen,
		.flags = FLOW_F_VALID | (op->flags & FLOW_F_CLOSING),
		.way = way,
		.expect = expect,
	};
	if (nd_flow_store(idx, &a) < 0)
		return XDP_ABORTED;
	/* The counts follow what the table holds: the entry replaced or
	 * displaced leaves its server's, the new one joins its own. */
	if (replaced) {
		count_out(snap.backend, snap.gen, snap.flags);
	} else if (snap.v_class != VICTIM_FREE) {
		count_gone(snap.v_backend, snap.v_gen, snap.v_flags);
		if (snap.v_class == VICTIM_HALFOPEN)
			count_global(G_HALFOPEN_EVICTED);
		if (snap.v_class == VICTIM_LIVE)
			count_global(G_EVICTED);
	}
	if (!(a.flags & FLOW_F_CLOSING))
		count_in(op->backend, op->gen);
	return XDP_PASS;
}

/* flow_write applies one struct flow_op, given as the packet of
 * BPF_PROG_RUN (nd_flow_apply's answer). */
SEC("xdp")
int flow_write(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct flow_op op;

	if (data + sizeof(op) > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(&op, data, sizeof(op));
	return nd_flow_apply(&op);
}

/* flow_write_batch applies up to FLOW_BATCH struct flow_op, the packet of
 * one BPF_PROG_RUN, in order, and writes each one's answer (nd_flow_apply's,
 * with FLOW_DONE) over its op field: a system call for FLOW_BATCH flows
 * instead of one each, which is most of what writing a flow costs. It stops
 * after an op that must be tried again, so that user space retries it
 * before the ops that follow (two ops may name one flow). */
SEC("xdp")
int flow_write_batch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	for (int i = 0; i < FLOW_BATCH; i++) {
		struct flow_op *in = data + i * sizeof(struct flow_op);
		struct flow_op op;

		if ((void *)(in + 1) > data_end)
			break;
		__builtin_memcpy(&op, in, sizeof(op));
		int r = nd_flow_apply(&op);
		in->op = FLOW_DONE | r;
		if (r == XDP_ABORTED)
			break;
	}
	return XDP_PASS;
}

/* clock_now writes now_ns() into the first 8 bytes of its input, so that
 * user space reads the clock the connection table's timestamps use. */
SEC("xdp")
int clock_now(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 *out = data;

	if ((void *)(out + 1) > data_end)
		return XDP_ABORTED;
	*out = now_ns();
	return XDP_PASS;
}
