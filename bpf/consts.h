/* Load-time constants, set by internal/executor before loading (frozen
 * .rodata: the verifier knows their values). */
#pragma once

#include <linux/bpf.h>

#include "types.h"
#include "maps.h"

volatile const __u32 ring_size = DEFAULT_RING_SIZE;
volatile const __u32 hash_seed = 0;
volatile const __u64 idle_timeout_ns = 300ull * 1000000000ull;
/* How long a half-open flow (SYN seen, no ACK yet) or a closing one is kept
 * after its last packet. */
volatile const __u64 halfopen_timeout_ns = 10ull * 1000000000ull;
/* expire_nodest_conn, as IPVS calls it: 1 to dispatch anew an established
 * flow whose server was taken out (weight 0), so that its client meets a
 * live server's RST at once instead of timeouts against a dead one. Off by
 * default: it also ends a quiesced server's flows, which nd cannot tell
 * from a server taken out by an advisor. A frozen constant: when 0, the
 * verifier removes the check from the program. */
volatile const __u32 expire_nodest = 0;
volatile const __u32 flow_buckets = DEFAULT_MAX_FLOWS / FLOW_WAYS;
volatile const __u32 svc_index_slots = 4 * DEFAULT_MAX_SERVICES;
volatile const __u32 vip_index_slots = 4 * DEFAULT_MAX_VIPS;
/* Nanoseconds per jiffy (1e9 / CONFIG_HZ), measured by user space. */
volatile const __u64 jiffy_ns = 4000000;
