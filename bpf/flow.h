/* The connection table: FLOW_WAYS-way buckets in an array, shared by all
 * CPUs. Each way is guarded by a sequence count: a writer makes it odd with
 * a compare-and-swap, rewrites the way and makes it even again; a reader
 * copies what it needs and trusts the copy only if the count was even and
 * unchanged. A reader that loses a race treats the flow as absent, which
 * sends the packet where the Maglev ring says: the same server unless the
 * weights changed in that microsecond. Plain loads and stores are ordered on
 * x86 (TSO), so compiler barriers are enough between them. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "types.h"
#include "maps.h"
#include "consts.h"
#include "hash.h"

#define barrier() asm volatile("" ::: "memory")
#define READ_ONCE_U32(x) (*(volatile __u32 *)&(x))

/* prefetch_line loads a word of a cache line and drops it: BPF has no
 * prefetch instruction, but a load nothing waits for lets the CPU fetch the
 * line while it carries on. */
static __always_inline void prefetch_line(const void *p)
{
	__u64 v = *(volatile const __u64 *)p;
	asm volatile("" : : "r"(v));
}

/* prefetch_bucket touches the bucket's four lines back to back, so their
 * misses (and the one page walk) overlap. */
static __always_inline void prefetch_bucket(const struct flow_bucket *b)
{
	const __u8 *p = (const __u8 *)b;

	prefetch_line(p);
	prefetch_line(p + 64);
	prefetch_line(p + 128);
	prefetch_line(p + 192);
}

/* What a reader copied out of a way. */
struct flow_snap {
	__u32 backend;
	__u32 gen;
	__u32 flags;
	__u32 seq;
	__u64 last_seen;
};

static __always_inline int flow_key_equal(const struct flow_key *a, const struct flow_key *b)
{
	const __u64 *x = (const __u64 *)a;
	const __u64 *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

/* flow_find returns the index of the way holding key, or -1. */
static __always_inline int flow_find_in(struct flow_bucket *b, const struct flow_key *key,
				     __u32 hash, struct flow_snap *snap)
{
	__u32 tag = FLOW_TAG(hash);

#pragma unroll
	for (int i = 0; i < FLOW_WAYS; i++) {
		struct flow_head *h = &b->head[i];
		__u32 seq = READ_ONCE_U32(h->seq);

		if (seq & 1)
			continue;
		barrier();
		__u32 meta = h->meta;
		if (!(meta & FLOW_F_VALID) || FLOW_TAG(meta) != tag)
			continue;
		struct flow_body *body = &b->body[i];
		if (!flow_key_equal(&body->key, key))
			continue;
		snap->backend = body->backend;
		snap->gen = body->gen;
		snap->flags = meta & FLOW_FLAGS_MASK;
		snap->last_seen = h->last_seen;
		barrier();
		if (READ_ONCE_U32(h->seq) != seq)
			return -1;
		snap->seq = seq;
		return i;
	}
	return -1;
}

/* flow_victim picks the way a new flow takes: a free or idle one, else the
 * least recently seen (the bucket is an LRU set). *live reports whether a
 * live flow is being pushed out. */
static __always_inline int flow_victim_in(struct flow_bucket *b, __u64 now, __u64 idle_ns, int *live)
{
	__u64 oldest = ~0ull;
	int victim = 0;

	*live = 0;
#pragma unroll
	for (int i = 0; i < FLOW_WAYS; i++) {
		struct flow_head *h = &b->head[i];
		__u64 seen = h->last_seen;

		if (!(h->meta & FLOW_F_VALID) || now - seen > idle_ns)
			return i;
		if (seen < oldest) {
			oldest = seen;
			victim = i;
		}
	}
	*live = 1;
	return victim;
}

/* flow_claim makes a way's count odd if nobody else is writing it, and
 * returns the odd count (or 0 when it lost). */
static __always_inline __u32 flow_claim(struct flow_head *h)
{
	__u32 seq = READ_ONCE_U32(h->seq);

	if (seq & 1)
		return 0;
	if (__sync_val_compare_and_swap(&h->seq, seq, seq + 1) != seq)
		return 0;
	barrier();
	return seq + 1;
}

/* flow_release makes the count even again. A plain store suffices: only the
 * claimer writes an odd count, and x86 keeps stores in program order, so
 * the way's new contents are visible before the count says so. */
static __always_inline void flow_release(struct flow_head *h, __u32 claimed)
{
	barrier();
	*(volatile __u32 *)&h->seq = claimed + 1;
}

/* flow_store writes a flow into way i. Returns -1 when another writer got
 * there first: the flow then just goes unrecorded, and its next packet
 * takes the ring. */
static __always_inline int flow_store_in(struct flow_bucket *b, int i, const struct flow_key *key,
				      __u32 hash, __u32 backend, __u32 gen, __u32 flags,
				      __u64 last_seen)
{
	struct flow_head *h = &b->head[i & (FLOW_WAYS - 1)];
	struct flow_body *body = &b->body[i & (FLOW_WAYS - 1)];

	__u32 claimed = flow_claim(h);
	if (!claimed)
		return -1;
	__builtin_memcpy(&body->key, key, sizeof(*key));
	body->backend = backend;
	body->gen = gen;
	h->meta = FLOW_TAG(hash) | (flags & FLOW_FLAGS_MASK);
	h->last_seen = last_seen;
	flow_release(h, claimed);
	return 0;
}

/* The table's entry points are global functions: the verifier checks each
 * once, on its own, and sees only a number come back. Inlined, their
 * early exits multiplied the paths through the dispatcher (390,000
 * instructions verified, a second to load); as calls they cost a few
 * nanoseconds. Pointer arguments may be NULL as far as the verifier knows. */

/* nd_flow_find returns the way of bucket idx holding key, or -1. */
__noinline int nd_flow_find(__u32 idx, const struct flow_key *key, __u32 hash, struct flow_snap *snap)
{
	struct flow_bucket *b = bpf_map_lookup_elem(&conns, &idx);

	if (!b || !key || !snap)
		return -1;
	return flow_find_in(b, key, hash, snap);
}

/* nd_flow_victim returns the way a new flow takes in bucket idx, plus
 * FLOW_VICTIM_LIVE when that pushes a live flow out; -1 on error. */
#define FLOW_VICTIM_LIVE 0x10
/* FLOW_MISS marks nd_flow_lookup's answer for a flow the bucket lacks. */
#define FLOW_MISS 0x100

/* nd_flow_lookup is nd_flow_find and nd_flow_victim in one call, for the
 * packet path: the way holding key (0..FLOW_WAYS-1), or FLOW_MISS | the
 * way a new flow would take (| FLOW_VICTIM_LIVE when that pushes a live
 * flow out); -1 on error. */
__noinline int nd_flow_lookup(__u32 idx, const struct flow_key *key, __u32 hash, struct flow_snap *snap, __u64 now)
{
	struct flow_bucket *b = bpf_map_lookup_elem(&conns, &idx);
	int live;

	if (!b || !key || !snap)
		return -1;
	int way = flow_find_in(b, key, hash, snap);
	if (way >= 0)
		return way;
	way = flow_victim_in(b, now, idle_timeout_ns, &live);
	return FLOW_MISS | way | (live ? FLOW_VICTIM_LIVE : 0);
}

__noinline int nd_flow_victim(__u32 idx, __u64 now, __u64 idle_ns)
{
	struct flow_bucket *b = bpf_map_lookup_elem(&conns, &idx);
	int live;

	if (!b)
		return -1;
	int way = flow_victim_in(b, now, idle_ns, &live);
	return way | (live ? FLOW_VICTIM_LIVE : 0);
}

struct flow_store_args {
	struct flow_key key;
	__u64 last_seen;
	__u32 hash;
	__u32 backend;
	__u32 gen;
	__u32 flags;
	__u32 way;
	__u32 pad;
};

/* nd_flow_store writes a flow into a way of bucket idx: 0, or -1 when
 * another writer holds the way. */
__noinline int nd_flow_store(__u32 idx, const struct flow_store_args *a)
{
	struct flow_bucket *b = bpf_map_lookup_elem(&conns, &idx);

	if (!b || !a)
		return -1;
	return flow_store_in(b, a->way, &a->key, a->hash, a->backend, a->gen, a->flags,
			     a->last_seen);
}
