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
#include "hash.h"

#define barrier() asm volatile("" ::: "memory")
#define READ_ONCE_U32(x) (*(volatile __u32 *)&(x))

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

static __always_inline struct flow_bucket *flow_bucket_of(__u32 hash, __u32 nbuckets)
{
	__u32 idx = bucket_index(hash, nbuckets);
	return bpf_map_lookup_elem(&conns, &idx);
}

/* flow_find returns the index of the way holding key, or -1. */
static __always_inline int flow_find(struct flow_bucket *b, const struct flow_key *key,
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
static __always_inline int flow_victim(struct flow_bucket *b, __u64 now, __u64 idle_ns, int *live)
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

/* flow_claim makes a way's count odd if nobody else is writing it. */
static __always_inline int flow_claim(struct flow_head *h)
{
	__u32 seq = READ_ONCE_U32(h->seq);

	if (seq & 1)
		return -1;
	if (__sync_val_compare_and_swap(&h->seq, seq, seq + 1) != seq)
		return -1;
	barrier();
	return 0;
}

static __always_inline void flow_release(struct flow_head *h)
{
	barrier();
	__sync_fetch_and_add(&h->seq, 1);
}

/* flow_store writes a flow into way i. Returns -1 when another writer got
 * there first: the flow then just goes unrecorded, and its next packet
 * takes the ring. */
static __always_inline int flow_store(struct flow_bucket *b, int i, const struct flow_key *key,
				      __u32 hash, __u32 backend, __u32 gen, __u32 flags,
				      __u64 last_seen)
{
	struct flow_head *h = &b->head[i & (FLOW_WAYS - 1)];
	struct flow_body *body = &b->body[i & (FLOW_WAYS - 1)];

	if (flow_claim(h) < 0)
		return -1;
	__builtin_memcpy(&body->key, key, sizeof(*key));
	body->backend = backend;
	body->gen = gen;
	h->meta = FLOW_TAG(hash) | (flags & FLOW_FLAGS_MASK);
	h->last_seen = last_seen;
	flow_release(h);
	return 0;
}
