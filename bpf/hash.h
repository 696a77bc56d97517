/* The flow hash that indexes a service's Maglev ring. It must spread
 * sequential ports and addresses evenly over 65,537 slots, and be the same on
 * every dispatcher (a standby must pick what the active would have picked
 * for flows it never saw), so the seed is a load-time constant, not random. */
#pragma once

#include <linux/types.h>

#include "types.h"

static __always_inline __u32 rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

/* One murmur3-style absorption step: multiply, rotate, multiply, fold in. */
static __always_inline __u32 hash_word(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 hash_final(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* flow_hash hashes the words of a flow key that can be non-zero: an IPv4
 * key leaves six of its ten words zero, so it hashes four. */
static __always_inline __u32 flow_hash(const struct flow_key *k, __u32 seed)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = seed;

	if (k->family == ND_AF_INET) {
		h = hash_word(h, k->src.addr[0]);
		h = hash_word(h, k->dst.addr[0]);
		h = hash_word(h, w[8]); /* ports */
		h = hash_word(h, w[9]); /* protocol, family */
		return hash_final(h ^ 16);
	}
#pragma unroll
	for (int i = 0; i < sizeof(*k) / 4; i++)
		h = hash_word(h, w[i]);
	return hash_final(h ^ sizeof(*k));
}

/* The p2c scheduler's second candidate comes from the same hash under
 * another seed. Murmur3 under two seeds gives unrelated values (the seed
 * enters before the first word is mixed in), so the two ring slots are as
 * good as independent draws; a remix of the first hash would be a fixed
 * function of it, and flows colliding on one would collide on both. Like
 * hash_seed, it must be the same on every dispatcher. */
#define P2C_SEED 0x5bd1e995u

/* addr_hash spreads VIP addresses over vip_filter's bits. */
static __always_inline __u32 addr_hash(const struct nd_addr *a, __u8 family)
{
	__u32 h = 0x9e3779b9u ^ family;

	h = hash_word(h, a->addr[0]);
	if (family == ND_AF_INET6) {
		h = hash_word(h, a->addr[1]);
		h = hash_word(h, a->addr[2]);
		h = hash_word(h, a->addr[3]);
	}
	return hash_final(h);
}

/* scale maps a hash onto [0, n) with a multiply instead of a division
 * (Lemire's "fastrange"): the high bits of hash * n. */
static __always_inline __u32 scale(__u32 hash, __u32 n)
{
	return ((__u64)hash * n) >> 32;
}

/* ring_slot and bucket_index take different bits of the flow hash, so that
 * flows sharing a table bucket do not also share a ring slot. */
static __always_inline __u32 ring_slot(__u32 hash, __u32 ring_size)
{
	return scale(rotl32(hash, 16), ring_size);
}

static __always_inline __u32 bucket_index(__u32 hash, __u32 nbuckets)
{
	return scale(hash, nbuckets);
}

/* svc_hash picks a service's home slot in svc_index. */
static __always_inline __u32 svc_hash(const struct svc_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = 0x85ebca6bu;

	h = hash_word(h, w[0]);
	h = hash_word(h, w[1]);
	h = hash_word(h, w[2]);
	h = hash_word(h, w[3]);
	h = hash_word(h, w[4]);
	return hash_final(h); /* w[5] is padding */
}

/* svc_filter_bit picks the svc_bloom bit of a (VIP, port, protocol) from
 * the VIP's addr_hash, already mixed: one multiply, whose high bits depend
 * on every bit of its input, on the established path. */
static __always_inline __u32 svc_filter_bit(__u32 ah, __u16 port, __u8 proto)
{
	return ((ah ^ ((__u32)port | (__u32)proto << 16)) * 0x9e3779b1u) >> 16;
}
