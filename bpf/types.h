/* Keys and values shared by the kernel and internal/executor (bpf2go turns
 * these into Go types, so every struct is padded explicitly: the Go side
 * must see the same bytes the kernel does). */
#pragma once

#include <linux/types.h>

#define ND_AF_INET 4
#define ND_AF_INET6 6

/* An address of either family. IPv4 uses addr[0] and leaves the rest
 * zero; family tells the two apart so ::a.b.c.d never aliases an IPv4 VIP. */
struct nd_addr {
	__u32 addr[4];
};

/* vips: every address nd owns, so that a packet to a VIP on a port that no
 * service defines can be told from a packet that is not ours at all. */
struct vip_key {
	struct nd_addr addr;
	__u8 family;
	__u8 pad[3];
};

struct vip_info {
	__u32 vip_id; /* index into vip_stats */
	__u32 pad;
};

/* services: VIP:port/protocol -> service. Aligned to 8 (24 bytes, the
 * last 4 zero) so that keys compare as three 64-bit words. */
struct svc_key {
	struct nd_addr addr;
	__u16 port; /* network byte order, as on the wire */
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;
} __attribute__((aligned(8)));

#define SVC_F_AFFINITY (1u << 0)
#define SVC_F_P2C (1u << 1) /* new flows: weighted power of two choices */

struct svc_info {
	__u32 svc_id;      /* index into rings and svc_stats */
	__u32 flags;       /* SVC_F_* */
	__u32 sticky_secs; /* client affinity window; used when SVC_F_AFFINITY */
	__u32 pad;
};

/* svc_index: an open-addressed copy of services that packets read without
 * a hash-map lookup (which costs 30-40 ns here). Two halves, one in use
 * (svc_index_sel): user space rebuilds the other and flips. A service that
 * does not fit within SVC_PROBES slots of its home is marked so that
 * readers fall back to the services hash. */
#define SVC_PROBES 4
#define SVC_SLOT_USED (1u << 0)
#define SVC_SLOT_OVERFLOW (1u << 1) /* some service is only in the hash */

struct svc_slot {
	struct svc_key key;
	struct svc_info info;
	__u32 flags; /* SVC_SLOT_* */
};

/* backends: one entry per (service, server): a "port server instance" in
 * the paper's terms, so weights, quiesce and counters are per port. */
#define BE_F_ACTIVE (1u << 0)   /* slot in use */
#define BE_F_LOCAL (1u << 1)    /* the dispatcher host itself (co-location) */
#define BE_F_QUIESCED (1u << 2) /* weight 0: keeps its flows, gets no new ones */
#define BE_F_P2C (1u << 3)      /* its service is p2c or delay: keep its server_active count */
#define BE_F_HELD (1u << 4)     /* unreachable now: its flows keep the slot, their packets are dropped */

struct backend {
	__u8 dst_mac[6]; /* the server's MAC */
	__u8 src_mac[6]; /* the egress interface's MAC */
	__u32 ifindex;   /* egress interface */
	__u32 svc_id;
	__u32 gen;   /* bumped whenever the slot is reused: stale flows notice */
	__u32 flags; /* BE_F_* */
	__u32 weight;
	/* The server's address is not needed to forward; it lets a restarted
	 * daemon map slots back to servers and keep every established flow. */
	struct nd_addr addr;
	__u8 family;
	__u8 pad[7];
};

/* conns: the connection table. Aligned to 8 so that keys compare as five
 * 64-bit words. */
struct flow_key {
	struct nd_addr src;
	struct nd_addr dst;
	__u16 sport; /* network byte order */
	__u16 dport; /* network byte order */
	__u8 proto;
	__u8 family;
	__u8 pad[2];
} __attribute__((aligned(8)));

#define FLOW_F_VALID (1u << 0)   /* the way holds a flow */
#define FLOW_F_CLOSING (1u << 1) /* client sent FIN or RST: counted as closed */
#define FLOW_F_STICKY (1u << 2)  /* its service has client affinity to refresh */
/* Half-open: the flow has only sent a SYN (or one stray packet) so far. A
 * half-open flow is not counted open, times out after halfopen_timeout_ns,
 * and may be displaced by a new flow; its first packet without SYN (the
 * handshake's ACK) makes it established. Entries without the flag (written
 * before it existed, too) are established or closing. */
#define FLOW_F_HALFOPEN (1u << 3)
/* Once: a UDP flow that has sent one packet so far. It is established and
 * counted open from that packet (a UDP exchange may be one datagram), but
 * until its second packet it ranks with half-open flows as a victim: a
 * flood of spoofed datagrams, one from each forged source, then churns
 * through the same ways as a SYN flood and cannot crowd new flows out. */
#define FLOW_F_ONCE (1u << 4)

/* A connection table bucket: FLOW_WAYS ways in 256 bytes, four cache lines
 * in one page (the table is page-aligned). What a lookup or a victim choice
 * reads of every way (sequence count, tag, flags, last seen) sits in the
 * first line; the ways' keys and servers fill the other three. The data
 * plane asks for all four lines at once, so a packet of a flow the caches
 * do not hold waits for one memory round trip and one page walk, not two
 * in a row. */
#define FLOW_WAYS 4

struct flow_head {
	/* Odd while a writer rewrites the way; readers that see it odd, or
	 * changed across their read, treat the way as absent. */
	__u32 seq;
	__u32 meta;      /* FLOW_F_* in the low byte, hash tag above */
	__u64 last_seen; /* now_ns(), refreshed about once a second */
};

struct flow_body {
	struct flow_key key;
	__u32 backend;
	__u32 gen; /* backend gen at dispatch; a mismatch means the server left */
};

struct flow_bucket {
	struct flow_head head[FLOW_WAYS];
	struct flow_body body[FLOW_WAYS];
};

_Static_assert(sizeof(struct flow_bucket) == 256, "a bucket is four cache lines");

#define FLOW_FLAGS_MASK 0xffu
#define FLOW_TAG(hash) ((hash) & ~FLOW_FLAGS_MASK)

/* flow_write's input, passed as the "packet" of BPF_PROG_RUN: user space
 * writes connection table entries through the same code, and the same
 * seqlock, as the data plane. */
#define FLOW_OP_UPSERT 1
#define FLOW_OP_DELETE 2
/* FLOW_BATCH bounds the ops of one flow_write_batch run: 2 KiB of input,
 * within what BPF_PROG_RUN takes for an XDP program. */
#define FLOW_BATCH 32
/* FLOW_DONE marks an op flow_write_batch applied; its answer is below it. */
#define FLOW_DONE 0x100

struct flow_op {
	__u32 op;
	__u32 backend;
	__u32 gen;
	__u32 flags; /* FLOW_F_CLOSING or 0 */
	__u64 idle_ns;
	struct flow_key key;
};

/* affinity: client address + service -> server, for sticky services. */
struct affinity_key {
	struct nd_addr client;
	__u32 svc_id;
	__u8 family;
	__u8 pad[3];
};

struct affinity_val {
	__u32 backend;
	__u32 gen;
	__u64 last_seen;
};

/* flow_events: the data plane's report of each new flow and each first
 * close, for user space to stream to standby dispatchers. The server is
 * named by address, so that the record means the same on a peer; its slot
 * and generation say which server instance it was here. */
#define FLOW_EV_OPENED 1 /* a flow was recorded (its first packet may close it) */
#define FLOW_EV_CLOSED 2 /* the client's first FIN or RST of a recorded flow */

struct flow_event {
	struct flow_key key;
	struct nd_addr server; /* the server's address; family as the key's */
	__u64 ts;              /* now_ns() of the packet */
	__u32 backend;         /* server slot */
	__u32 gen;             /* its generation */
	__u8 kind;             /* FLOW_EV_* */
	__u8 flags;            /* FLOW_F_* of the entry after the packet */
	__u8 pad[6];
};

/* Per-CPU counters; user space sums the CPUs. */
struct backend_stats {
	__u64 new_flows;
	__u64 packets;
	__u64 bytes;
	__u64 closed;  /* flows seen closing by client FIN or RST */
	__u64 expired; /* flows found idle past the idle timeout */
	__u64 halfopen_opened; /* half-open flows recorded (SYNs, strays) */
};

/* A service's packets and bytes are its servers' sums (user space adds
 * them up), so the data plane counts them once, per server. */
struct svc_stats {
	__u64 no_backend; /* dropped: no server with a positive weight */
};

struct vip_stats {
	__u64 filtered;  /* dropped: port or protocol not defined on this VIP */
	__u64 fragments; /* dropped: IP fragments are never dispatched */
	__u64 icmp_local;   /* ICMP handed to the dispatcher's own stack */
	__u64 icmp_forwarded; /* PMTU errors sent to the server owning the flow */
};

enum global_counter {
	G_PASSED = 0,  /* not for a VIP: passed untouched */
	G_MALFORMED,   /* could not be parsed */
	G_NOT_IP,      /* neither IPv4 nor IPv6: passed */
	G_EVICTED,     /* live flows pushed out of a full table bucket */
	G_FLOW_BUSY,   /* flows not recorded: their way was being written */
	G_EVENTS_LOST, /* flow events not reported: flow_events was full */
	G_OTHER_HOST,  /* for a VIP but sent to another host's MAC: passed */
	G_HALFOPEN_EVICTED,  /* live half-open flows displaced by a new flow */
	G_OPENER_UNRECORDED, /* SYNs (and first UDP packets) not recorded: every
			      * way of their bucket held a live established or
			      * closing flow */
	G_STRAY_UNRECORDED,  /* packets of unknown flows (ACK, data) not recorded:
			      * no free way (they displace nothing) */
	G_MAX,
};

/* if_mac: an attached interface's Ethernet address, as user space read it
 * on attach. known is 0 for an interface it has not written. */
struct if_mac {
	__u8 addr[6];
	__u16 known;
};

/* if_macs covers interface indexes below this; frames arriving on others
 * are not checked (see frame_for_us). */
#define MAX_IFINDEX 65536

/* vip_filter: one bit per hash of a VIP address. A clear bit proves a
 * packet is not for a VIP, so the host's own traffic costs one array read. */
#define VIP_FILTER_BITS 65536

struct vip_filter {
	__u64 bits[VIP_FILTER_BITS / 64];
};

/* Ring entry meaning "no server": every weight is zero. Server slots are
 * therefore below 0xffff. */
#define RING_EMPTY 0xffffu

/* svc_members: the servers of a delay service that may take new flows, each
 * with its costs (user space computes them from the weights and the
 * manager's delay factors, in 1/4096ths). The delay scheduler scores every
 * member held x per_flow + base, the delay a new flow can expect there, and
 * takes the lowest: per_flow is the delay factor times the mean weight
 * over the server's weight, base the delay factor. Among servers as fast
 * as their peers that is least connections per unit of weight, idle
 * servers all equal (the Maglev ring's pick then takes the flow, so shares
 * follow the weights at rest); a slower server costs its factor even idle.
 * A service with more servers than this is scheduled as p2c. */
#define SVC_F_DELAY (1u << 2)
#define MEMBERS_MAX 16

#define MEMBER_COST_SHIFT 12

struct member {
	__u16 id; /* server slot */
	__u16 pad;
	__u32 per_flow;
	__u32 base;
	__u32 pad2;
};

struct member_list {
	__u32 n;      /* members in use, at most MEMBERS_MAX */
	__u32 charge; /* a typical flow's time over PICK_WINDOW_NS, in 1/65536ths; 0: off */
	struct member m[MEMBERS_MAX];
};

/* server_picks: how many new flows the delay scheduler gave each server
 * slot in the current window of PICK_WINDOW_NS and in the one before. A
 * server whose flows end much sooner than its peers' (a "sinkhole" that
 * answers every request at once with an error) holds few open flows and
 * would look idle; the scheduler charges it, instead, the flows it would
 * hold if they lasted as long as a typical flow (Little's law: recent picks
 * x typical time), once that figure is PICK_CHARGE_FACTOR times what it
 * holds. Updated without a lock: a race loses a count, and the figure is
 * an estimate anyway. */
#define PICK_WINDOW_SHIFT 28 /* 2^28 ns, about 268 ms */
#define PICK_CHARGE_FACTOR 3

struct pick_window {
	__u32 epoch; /* now >> PICK_WINDOW_SHIFT, truncated */
	__u32 cur;
	__u32 prev;
	__u32 pad;
};
/* dp_id: written once by the process that creates the pinned maps. */
#define DP_ID_MAGIC 0x6e64666cu /* "ndfl" */

struct dp_id {
	__u32 magic; /* DP_ID_MAGIC once written */
	__u32 hash_seed;
	__u32 flow_ways;
	__u32 marks; /* DP_MARK_*: the control plane's, kept with the tables */
};

/* The operator drained the dispatcher: its routes stay withdrawn. */
#define DP_MARK_DRAINED (1u << 0)

/* vip_index's slots. */
struct vip_slot {
	struct nd_addr addr;
	__u8 family;
	__u8 used;
	__u16 pad;
	__u32 vip_id;
};
