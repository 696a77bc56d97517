/* Every map of the dispatcher, one definition each. The max_entries here are
 * defaults: internal/executor resizes them from the configuration before
 * loading, so they only need to be sane. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "types.h"

#define DEFAULT_MAX_SERVICES 1024
#define DEFAULT_MAX_BACKENDS 4096
#define DEFAULT_MAX_VIPS 1024
#define DEFAULT_RING_SIZE 65537
#define DEFAULT_MAX_FLOWS (1 << 20)
#define DEFAULT_MAX_AFFINITY (1 << 16)
#define DEFAULT_FLOW_EVENTS (1 << 20) /* bytes */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEFAULT_MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, struct vip_info);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEFAULT_MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_info);
} services SEC(".maps");

/* Both halves of the service index, 2 * svc_index_slots entries. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * 4 * DEFAULT_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct svc_slot);
} svc_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32); /* 0 or 1: the half in use */
} svc_index_sel SEC(".maps");

/* One Maglev ring per service, swapped whole: user space fills a fresh
 * inner map and replaces the outer slot in one update, so a packet sees
 * either the old ring or the new one, never a mix. A ring is one value of
 * 16-bit server slots: 128 KiB at the default size, small enough to stay in
 * a core's cache, where an array of 65,537 entries (each rounded to 8
 * bytes) would take 512 KiB. User space sizes the value to the ring size. */
typedef __u16 ring_slots_t[DEFAULT_RING_SIZE]; /* server slot, or RING_EMPTY */

struct ring {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, ring_slots_t);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, DEFAULT_MAX_SERVICES);
	__type(key, __u32); /* svc_id */
	__array(values, struct ring);
} rings SEC(".maps");

/* Two copies of every server slot: user space rewrites the copy not in use
 * and then flips backend_sel, so a packet never reads a server whose MAC is
 * half rewritten, at the price of one more array read. Slot i's copies are
 * 2i and 2i+1. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * DEFAULT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DEFAULT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __u32); /* 0 or 1: the copy in use */
} backend_sel SEC(".maps");

/* The connection table: a 4-way set-associative table in an array, shared
 * by all CPUs, replacing the least recently seen way of a full bucket. A
 * kernel hash map costs 300-550 ns per insert on these machines (bucket
 * lock, element allocation, LRU lists); a way here is claimed with one
 * compare-and-swap, which is what makes new flows cheap. Mmapable only
 * because the kernel then starts the values on a page boundary: no bucket
 * straddles two cache lines too many or two pages. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DEFAULT_MAX_FLOWS / FLOW_WAYS);
	__type(key, __u32);
	__type(value, struct flow_bucket);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vip_filter);
} vip_bloom SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DEFAULT_MAX_AFFINITY);
	__type(key, struct affinity_key);
	__type(value, struct affinity_val);
} affinity SEC(".maps");

/* affinity_pending: the sticky choices of SYNs whose handshake has not
 * completed. A client's later SYNs follow them (a browser's parallel
 * connections land together), and the handshake's ACK moves the choice to
 * affinity: a flood of spoofed SYNs churns this table only, never the
 * records of clients that completed a handshake. UDP has no handshake: its
 * choices go to affinity at once. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DEFAULT_MAX_AFFINITY);
	__type(key, struct affinity_key);
	__type(value, struct affinity_val);
} affinity_pending SEC(".maps");

/* Egress interfaces other than the ingress one (the paper's two-network
 * configuration): ifindex -> ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

/* if_macs: the Ethernet address of every interface the program is attached
 * to, by ifindex. An array, so that the lookup is inlined: every frame for a
 * VIP reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_IFINDEX);
	__type(key, __u32);
	__type(value, struct if_mac);
} if_macs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DEFAULT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_stats);
} stats_backend SEC(".maps");

/* server_active: the open flows of each server slot, which the p2c scheduler
 * compares. One counter for all CPUs, moved with atomic adds: a scheduler
 * must read a total, and summing per-CPU counters for two candidates on
 * every new flow would cost more than the add. Kept only for servers of p2c
 * services (BE_F_P2C), so that Maglev services pay nothing. Signed, because
 * a lost race or a stale reconcile can take it below zero; readers treat
 * that as 0. User space zeroes it when the slot gets a new server and
 * rewrites it from the connection table (ReconcileActive). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DEFAULT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __s64);
} server_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DEFAULT_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct svc_stats);
} stats_service SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DEFAULT_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct vip_stats);
} stats_vip SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, G_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats_global SEC(".maps");

/* flow_events: struct flow_event records for user space (high availability).
 * A ring buffer, so that records of all CPUs arrive in one order and user
 * space reads them without a system call while they keep coming. A full
 * ring never blocks a packet: the record is dropped and counted
 * (G_EVENTS_LOST). Reserving a record takes the ring's lock, which all CPUs
 * share: the price of one order, paid only while reporting is on. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, DEFAULT_FLOW_EVENTS);
} flow_events SEC(".maps");

/* A ring buffer has no value type: this names struct flow_event in the
 * object's BTF, so that bpf2go generates its Go twin. */
const struct flow_event *unused_flow_event __attribute__((unused));

/* flow_events_on: non-zero while user space reads flow_events. Off, the
 * reports cost one load per new flow and per close. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} flow_events_on SEC(".maps");

/* svc_members: two halves per service (2 * svc_id + half), one in use
 * (members_sel): user space rewrites the other and flips, so a new flow
 * scores either the old member list or the new one, never a mix. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * DEFAULT_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct member_list);
} svc_members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DEFAULT_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32); /* 0 or 1: the half in use */
} members_sel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DEFAULT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct pick_window);
} server_picks SEC(".maps");
/* server_halfopen: the half-open flows of each server slot (SYN recorded,
 * handshake not completed), for every service. Apart from server_active so
 * that a flood of SYNs moves no count a scheduler or the manager judges
 * load by, yet readable by a scheduler that wants "established + recently
 * picked". Per CPU, moved by plain adds: a flood moves it at the flood's
 * rate, and two atomic adds a SYN (the new flow's server, the displaced
 * one's) cost a new flow 5-10%. A flow may enter on one CPU and leave on
 * another, so one CPU's value may be negative: the count is the sum over
 * CPUs (bpf_map_lookup_percpu_elem for each, in a program), read as 0
 * below 0. User space zeroes it when the slot gets a new server and
 * corrects it from the connection table (ReconcileActive, on CPU 0's
 * value), since half-open flows that time out unseen leave it only there. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DEFAULT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __s64);
} server_halfopen SEC(".maps");

/* table_pressure: per CPU, the now_ns() of the last time a new flow
 * displaced a live half-open flow or found no way it may take. User space
 * reports the table under pressure while the latest is recent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} table_pressure SEC(".maps");

/* svc_bloom: one bit per hash of a (VIP, port, protocol), set for every
 * service. A clear bit proves a packet is for no service, so a packet to an
 * undefined port is dropped before any connection table work. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vip_filter);
} svc_bloom SEC(".maps");

/* data_plane_id: what the pinned tables were built with, so that a daemon
 * restarted with another hash seed refuses to take them over instead of
 * orphaning every flow. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dp_id);
} data_plane_id SEC(".maps");

/* vip_index: VIPs by the slot their address hash scales to, so that a
 * packet to a VIP's undefined port finds the VIP's counters without a hash
 * lookup. Direct-mapped: a VIP whose slot another holds is found in vips.
 * User space rewrites it with the VIP filter; a packet reading a slot being
 * rewritten at worst counts its drop on the other VIP of that slot. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * DEFAULT_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct vip_slot);
} vip_index SEC(".maps");
