/* Choosing a server for a new flow: the Maglev ring, power of two choices,
 * the delay scheduler (least expected delay) and client affinity. */
#ifndef ND_PICK_H
#define ND_PICK_H

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
/* sticky_pick is the server of the client's record in an affinity table
 * (map), if the record is within the service's window and its server may
 * take new flows; the record is refreshed. The window is compared signed:
 * another CPU may have stamped the record after now was read. */
static __always_inline struct backend *sticky_pick(void *map, struct affinity_key *ak,
						   struct svc_info *svc, __u64 now, __u32 *be_id)
{
	struct affinity_val *av = bpf_map_lookup_elem(map, ak);
	if (!av || (__s64)(now - av->last_seen) > (__s64)((__u64)svc->sticky_secs * NS_PER_SEC))
		return NULL;
	struct backend *be = backend_get(av->backend, av->gen, svc->svc_id);
	if (!be || (be->flags & BE_F_QUIESCED))
		return NULL;
	*be_id = av->backend;
	av->last_seen = now;
	return be;
}

static __always_inline struct backend *pick(struct svc_info *svc, struct packet *p, __u32 hash,
					    __u64 now, __u32 *be_id, int schedule)
{
	struct affinity_key ak = {};
	struct backend *be;
	int sticky = svc->flags & SVC_F_AFFINITY;

	if (sticky) {
		ak.client = p->key.src;
		ak.svc_id = svc->svc_id;
		ak.family = p->key.family;
		be = sticky_pick(&affinity, &ak, svc, now, be_id);
		if (!be)
			be = sticky_pick(&affinity_pending, &ak, svc, now, be_id);
		if (be)
			return be;
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
		/* A TCP choice becomes the client's record once its handshake
		 * completes (confirm_affinity); until then it is pending. */
		if (p->key.proto == IPPROTO_TCP)
			bpf_map_update_elem(&affinity_pending, &ak, &nv, BPF_ANY);
		else
			bpf_map_update_elem(&affinity, &ak, &nv, BPF_ANY);
	}
	return be;
}

/* confirm_affinity makes a sticky flow's server the client's record: its
 * handshake completed, so the client is no spoofed source. */
static __always_inline void confirm_affinity(__u32 svc_id, struct packet *p, __u32 be_id, __u32 gen,
					     __u64 now)
{
	struct affinity_key ak = {};
	struct affinity_val nv = {
		.backend = be_id,
		.gen = gen,
		.last_seen = now,
	};

	ak.client = p->key.src;
	ak.svc_id = svc_id;
	ak.family = p->key.family;
	bpf_map_update_elem(&affinity, &ak, &nv, BPF_ANY);
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
#endif /* ND_PICK_H */
