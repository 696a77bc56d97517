/* Counters: global and per-server statistics, flow events for user space,
 * the open-flow and half-open counts the schedulers and the manager read. */
#ifndef ND_COUNTERS_H
#define ND_COUNTERS_H

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
#endif /* ND_COUNTERS_H */
