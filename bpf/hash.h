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

static __always_inline __u32 flow_hash(const struct flow_key *k, __u32 seed)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = seed;

#pragma unroll
	for (int i = 0; i < sizeof(*k) / 4; i++)
		h = hash_word(h, w[i]);
	return hash_final(h ^ sizeof(*k));
}
