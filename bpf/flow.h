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

/* What a reader copied out of a way, and on a miss, of the way a new flow
 * would take (the victim). */
struct flow_snap {
	__u32 backend;
	__u32 gen;
	__u32 flags;
	__u32 seq;
	__u64 last_seen;
	__u32 v_way;
	__u32 v_class; /* VICTIM_* */
	__u32 v_seq;   /* the victim's count when read: a store claims from it */
	__u32 v_flags; /* the victim's FLOW_F_* */
	__u32 v_backend;
	__u32 v_gen;
};

/* Victim classes, best first. Which a packet may take is the caller's rule:
 * a SYN (or a first UDP packet) up to VICTIM_HALFOPEN, a stray packet of an
 * unknown flow only up to VICTIM_EXPIRED, user space any. */
#define VICTIM_FREE 0     /* an empty way, or a stale one nothing counts */
#define VICTIM_EXPIRED 1  /* a flow idle past its state's timeout */
#define VICTIM_HALFOPEN 2 /* the oldest live half-open flow (or UDP flow seen once) */
#define VICTIM_LIVE 3     /* the oldest live established or closing flow */
#define VICTIM_NONE 4     /* every way is being written */

/* flow_timeout: how long a flow in a state is kept after its last packet. */
static __always_inline __u64 flow_timeout(__u32 flags)
{
	return (flags & (FLOW_F_HALFOPEN | FLOW_F_CLOSING)) ? halfopen_timeout_ns : idle_timeout_ns;
}

/* flow_idle: last seen at seen, is the flow idle past timeout at now? The
 * difference is signed: now is read before the lookup, and another CPU may
 * have written a later last_seen meanwhile; unsigned, that flow would look
 * idle for 584 years. */
static __always_inline int flow_idle(__u64 now, __u64 seen, __u64 timeout)
{
	return (__s64)(now - seen) > (__s64)timeout;
}

static __always_inline int flow_key_equal(const struct flow_key *a, const struct flow_key *b)
{
	const __u64 *x = (const __u64 *)a;
	const __u64 *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

/* FLOW_SPINS bounds how often a reader reads again the count of a way
 * another CPU is writing: a writer holds a way for a few dozen
 * instructions, so a reader that waits that long finds it settled unless
 * the writer was interrupted. */
#define FLOW_SPINS 4

/* FLOW_BUSY is flow_find_in's answer when the key is in no way it could
 * read, but some way was being written throughout: the key may be there. */
#define FLOW_BUSY (-2)

static __always_inline __u32 flow_settled_seq(struct flow_head *h)
{
	__u32 seq = READ_ONCE_U32(h->seq);

	/* FLOW_SPINS reads again, spelled out: the compiler will not unroll
	 * a loop over volatile reads that may end early. */
	if (seq & 1)
		seq = READ_ONCE_U32(h->seq);
	if (seq & 1)
		seq = READ_ONCE_U32(h->seq);
	if (seq & 1)
		seq = READ_ONCE_U32(h->seq);
	if (seq & 1)
		seq = READ_ONCE_U32(h->seq);
	return seq;
}

/* flow_find returns the index of the way holding key, -1, or FLOW_BUSY.
 * A reader that took a way being written for absent would let a packet of
 * the flow record it a second time, in another way. */
static __always_inline int flow_find_in(struct flow_bucket *b, const struct flow_key *key,
				     __u32 hash, struct flow_snap *snap)
{
	__u32 tag = FLOW_TAG(hash);
	int busy = 0;

#pragma unroll
	for (int i = 0; i < FLOW_WAYS; i++) {
		struct flow_head *h = &b->head[i];
		__u32 seq = flow_settled_seq(h);

		if (seq & 1) {
			busy = 1;
			continue;
		}
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
		if (READ_ONCE_U32(h->seq) != seq) {
			busy = 1; /* rewritten while copied: the copy is not the flow's */
			continue;
		}
		snap->seq = seq;
		return i;
	}
	return busy ? FLOW_BUSY : -1;
}

/* flow_victim_in picks the way a new flow would take: a free or expired
 * one, else the least recently seen half-open flow (or UDP flow seen
 * once), else the least recently
 * seen live flow (which only user space may displace). It records the
 * victim's count and contents in snap, so that a store can claim the way
 * only if it still holds what was judged. */
static __always_inline void flow_victim_in(struct flow_bucket *b, __u64 now, struct flow_snap *snap)
{
	__u64 oldest_half = ~0ull, oldest_live = ~0ull;
	int half = -1, live = -1, way = -1;
	__u32 class = VICTIM_NONE;

#pragma unroll
	for (int i = 0; i < FLOW_WAYS; i++) {
		struct flow_head *h = &b->head[i];
		__u32 seq = READ_ONCE_U32(h->seq);

		if (seq & 1)
			continue;
		barrier();
		__u32 meta = h->meta;
		__u64 seen = h->last_seen;

		if (!(meta & FLOW_F_VALID)) {
			way = i;
			class = VICTIM_FREE;
			break;
		}
		if (flow_idle(now, seen, flow_timeout(meta))) {
			way = i;
			class = VICTIM_EXPIRED;
			break;
		}
		if (meta & (FLOW_F_HALFOPEN | FLOW_F_ONCE)) {
			if (seen < oldest_half) {
				oldest_half = seen;
				half = i;
			}
		} else if (seen < oldest_live) {
			oldest_live = seen;
			live = i;
		}
	}
	if (way < 0) {
		if (half >= 0) {
			way = half;
			class = VICTIM_HALFOPEN;
		} else if (live >= 0) {
			way = live;
			class = VICTIM_LIVE;
		} else {
			snap->v_class = VICTIM_NONE;
			return;
		}
	}
	struct flow_head *h = &b->head[way & (FLOW_WAYS - 1)];
	struct flow_body *body = &b->body[way & (FLOW_WAYS - 1)];
	__u32 seq = READ_ONCE_U32(h->seq);
	barrier();
	snap->v_way = way;
	snap->v_class = class;
	snap->v_seq = seq;
	snap->v_flags = h->meta & FLOW_FLAGS_MASK;
	snap->v_backend = body->backend;
	snap->v_gen = body->gen;
	/* A writer between the scan and here changed the count: a store
	 * claiming from seq then fails, so the copy need not be checked. */
}

/* flow_claim makes a way's count odd if it is still expect (even), and
 * returns the odd count, or 0 when another writer got there first. */
static __always_inline __u32 flow_claim(struct flow_head *h, __u32 expect)
{
	if (expect & 1)
		return 0;
	if (__sync_val_compare_and_swap(&h->seq, expect, expect + 1) != expect)
		return 0;
	barrier();
	return expect + 1;
}

/* flow_release makes the count even again. A plain store suffices on x86,
 * which keeps stores in program order (TSO): the way's new contents are
 * visible before the count says so. Weakly ordered CPUs would need a
 * release store here and acquire loads in readers, which BPF cannot
 * express cheaply; internal/executor refuses to load on them. */
static __always_inline void flow_release(struct flow_head *h, __u32 claimed)
{
	barrier();
	*(volatile __u32 *)&h->seq = claimed + 1;
}

/* flow_store_in writes a flow into way i if its count is still expect.
 * Returns -1 when another writer changed the way since it was read: the
 * flow then just goes unrecorded, and its next packet looks again. */
static __always_inline int flow_store_in(struct flow_bucket *b, int i, __u32 expect,
					 const struct flow_key *key, __u32 hash, __u32 backend,
					 __u32 gen, __u32 flags, __u64 last_seen)
{
	struct flow_head *h = &b->head[i & (FLOW_WAYS - 1)];
	struct flow_body *body = &b->body[i & (FLOW_WAYS - 1)];

	__u32 claimed = flow_claim(h, expect);
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

/* nd_flow_find returns the way of bucket idx holding key, -1, or FLOW_BUSY. */
__noinline int nd_flow_find(__u32 idx, const struct flow_key *key, __u32 hash, struct flow_snap *snap)
{
	struct flow_bucket *b = bpf_map_lookup_elem(&conns, &idx);

	if (!b || !key || !snap)
		return -1;
	return flow_find_in(b, key, hash, snap);
}

/* FLOW_MISS marks nd_flow_lookup's answer for a flow the bucket lacks. */
#define FLOW_MISS 0x100

/* nd_flow_lookup is the packet path's look-up: the way holding key
 * (0..FLOW_WAYS-1), or FLOW_MISS with the victim a new flow would take
 * described in snap; -1 on error. */
__noinline int nd_flow_lookup(__u32 idx, const struct flow_key *key, __u32 hash, struct flow_snap *snap, __u64 now)
{
	struct flow_bucket *b = bpf_map_lookup_elem(&conns, &idx);

	if (!b || !key || !snap)
		return -1;
	int way = flow_find_in(b, key, hash, snap);
	if (way >= 0)
		return way;
	if (way == FLOW_BUSY) {
		snap->v_class = VICTIM_NONE; /* may be there: record nothing */
		return FLOW_MISS;
	}
	flow_victim_in(b, now, snap);
	return FLOW_MISS;
}

struct flow_store_args {
	struct flow_key key;
	__u64 last_seen;
	__u32 hash;
	__u32 backend;
	__u32 gen;
	__u32 flags;
	__u32 way;
	__u32 expect; /* the way's count when it was judged */
};

/* nd_flow_store writes a flow into a way of bucket idx: 0, or -1 when
 * another writer changed the way since it was read. */
__noinline int nd_flow_store(__u32 idx, const struct flow_store_args *a)
{
	struct flow_bucket *b = bpf_map_lookup_elem(&conns, &idx);

	if (!b || !a)
		return -1;
	return flow_store_in(b, a->way, a->expect, &a->key, a->hash, a->backend, a->gen, a->flags,
			     a->last_seen);
}

/* nd_flow_update changes the state of way `way` of bucket idx under its
 * count, if the count is still seq (the way holds what the caller read):
 * flags are set (low 16 bits of set_clear) and cleared (high 16 bits;
 * FLOW_CLEAR_ALL empties the way), and last_seen is written unless 0.
 * Returns 0, or -1 when the way changed or is being written: the caller
 * then leaves the counts alone, as the change is someone else's. */
#define FLOW_CLEAR_ALL 0xffff0000u
#define FLOW_SET_CLEAR(set, clear) ((set) | ((clear) << 16))

__noinline int nd_flow_update(__u32 idx, __u32 way, __u32 seq, __u32 set_clear, __u64 last_seen)
{
	struct flow_bucket *b = bpf_map_lookup_elem(&conns, &idx);

	if (!b)
		return -1;
	struct flow_head *h = &b->head[way & (FLOW_WAYS - 1)];
	__u32 claimed = flow_claim(h, seq);
	if (!claimed)
		return -1;
	__u32 meta = h->meta;
	if ((set_clear & FLOW_CLEAR_ALL) == FLOW_CLEAR_ALL)
		meta = 0;
	else
		meta = (meta | (set_clear & FLOW_FLAGS_MASK)) & ~((set_clear >> 16) & FLOW_FLAGS_MASK);
	h->meta = meta;
	if (last_seen)
		h->last_seen = last_seen;
	flow_release(h, claimed);
	return 0;
}
