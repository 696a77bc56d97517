/* nd's executor: the XDP entry point. parse -> look up -> pick -> forward.
 *
 * Forwarding never touches IP or transport headers: only the Ethernet
 * addresses change, and servers that hold the VIP on a loopback alias answer
 * clients directly. See docs/ARCHITECTURE.md for the packet walk. */
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "types.h"
#include "maps.h"
#include "consts.h"
#include "parse.h"
#include "hash.h"
#include "flow.h"
#include "clock.h"
#include "lookup.h"
#include "counters.h"
#include "pick.h"
#include "forward.h"

/* flow_lookup is where a TCP or UDP packet to a VIP starts: its table
 * bucket and, if the table knows the flow, the way and what it holds;
 * otherwise (snap.v_*) the way a new flow would take. */
struct flow_lookup {
	struct flow_bucket *bucket;
	__u32 idx; /* the bucket's index */
	__u32 hash;
	int way;
	struct flow_snap snap;
};

/* reuse_way makes the flow's own way the one its new pick takes, with the
 * class that says how its old contents are counted out. */
static __always_inline void reuse_way(struct flow_lookup *fl, __u32 class, __u32 seq)
{
	fl->snap.v_way = fl->way;
	fl->snap.v_class = class;
	fl->snap.v_seq = seq;
	fl->snap.v_flags = fl->snap.flags;
	fl->snap.v_backend = fl->snap.backend;
	fl->snap.v_gen = fl->snap.gen;
}

/* dispatch_established forwards a packet of a flow the table knows, without
 * even looking its service up: the way names the server, the server its
 * service. Returns -1 when the packet must be dispatched as a new flow: no
 * entry, its server left, it idled out, a SYN reuses a closed tuple, or a
 * half-open flow's server may take no new flow. Every change of a way's
 * state is made under its count, from the count the lookup read, so that
 * of two CPUs only one moves a counter, and never on a flow that another
 * CPU has meanwhile put in the way. */
static __always_inline int dispatch_established(struct xdp_md *ctx, struct packet *p,
						struct flow_lookup *fl, __u64 now, __u64 bytes)
{
	if (fl->way < 0)
		return -1;

	__u32 be_id = fl->snap.backend;
	__u32 flags = fl->snap.flags;
	struct backend *be = backend_read(be_id);
	if (!be || !(be->flags & BE_F_ACTIVE) || be->gen != fl->snap.gen) {
		reuse_way(fl, VICTIM_FREE, fl->snap.seq); /* its server left: nothing counts it */
		return -1;
	}
	if (expire_nodest && !(flags & (FLOW_F_HALFOPEN | FLOW_F_CLOSING)) && (be->flags & BE_F_QUIESCED)) {
		/* expire_nodest_conn: an established flow of a server taken
		 * out leaves it (counted expired) and is dispatched anew. */
		reuse_way(fl, VICTIM_EXPIRED, fl->snap.seq);
		return -1;
	}
	if (be->flags & BE_F_HELD) {
		/* Its server cannot be reached now: the flow keeps its way,
		 * and its server for when it is back; the packet goes nowhere
		 * (counted with the port's packets that found no server). */
		struct svc_stats *ss = bpf_map_lookup_elem(&stats_service, &be->svc_id);
		if (ss)
			ss->no_backend += 1;
		return XDP_DROP;
	}
	int is_tcp = p->key.proto == IPPROTO_TCP;
	__u8 tcp_flags = is_tcp ? p->tcp_flags : 0;
	/* The common case first: a packet of an established or closing flow
	 * seen within the refresh interval (so not idle: every timeout is at
	 * least a second), that changes nothing. */
	if (!(flags & (FLOW_F_HALFOPEN | FLOW_F_ONCE)) && !(tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST)) &&
	    !flow_idle(now, fl->snap.last_seen, REFRESH_NS)) {
		count_backend(be_id, bytes, 0, 0, 0);
		return forward(ctx, be);
	}
	if (flow_idle(now, fl->snap.last_seen, flow_timeout(flags))) {
		/* Idle past its timeout: take it out once, and only then stop
		 * counting it, so that a packet the new pick drops cannot count
		 * it again. */
		if (nd_flow_update(fl->idx, fl->way, fl->snap.seq, FLOW_CLEAR_ALL, 0) == 0) {
			count_gone(be_id, fl->snap.gen, flags);
			reuse_way(fl, VICTIM_FREE, fl->snap.seq + 2);
		} else {
			fl->snap.v_class = VICTIM_NONE;
		}
		return -1;
	}
	int syn = (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	int fin = tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST);
	if (syn && (flags & FLOW_F_CLOSING)) {
		reuse_way(fl, VICTIM_EXPIRED, fl->snap.seq); /* a closed tuple reused */
		return -1;
	}
	if (syn && (flags & FLOW_F_HALFOPEN) && (be->flags & BE_F_QUIESCED)) {
		/* A SYN retransmitted to a server taken out: picked again. */
		reuse_way(fl, VICTIM_EXPIRED, fl->snap.seq);
		return -1;
	}

	__u32 set = 0, clear = 0;
	__u64 seen = 0;
	int opened = 0, closed = 0, left_halfopen = 0, confirmed = 0;
	if (flow_idle(now, fl->snap.last_seen, REFRESH_NS)) {
		seen = now;
		if (flags & FLOW_F_STICKY)
			refresh_affinity(be->svc_id, p, &fl->snap, now);
	}
	if (flags & FLOW_F_HALFOPEN) {
		if (fin) {
			/* Given up before the handshake completed: closing. */
			set = FLOW_F_CLOSING;
			clear = FLOW_F_HALFOPEN;
			left_halfopen = 1;
		} else if (!syn) {
			/* The handshake's ACK: established. */
			clear = FLOW_F_HALFOPEN;
			seen = now;
			opened = left_halfopen = 1;
		}
	} else if (fin && !(flags & FLOW_F_CLOSING)) {
		set = FLOW_F_CLOSING;
		closed = 1;
	} else if (flags & FLOW_F_ONCE) {
		/* A UDP flow's second packet: no longer a victim, and now
		 * reported (a spoofed datagram never sends a second one). */
		clear = FLOW_F_ONCE;
		confirmed = 1;
	}
	if (set | clear | seen) {
		if (nd_flow_update(fl->idx, fl->way, fl->snap.seq, FLOW_SET_CLEAR(set, clear), seen) < 0)
			opened = closed = left_halfopen = confirmed = 0; /* another CPU changed it */
	}
	if (confirmed && flow_report_on())
		nd_flow_report(&p->key, be, be_id, FLOW_EV_OPENED << 8 | (flags & ~FLOW_F_ONCE), now);
	if (left_halfopen)
		halfopen_add(be_id, -1);
	if (opened && (flags & FLOW_F_STICKY))
		confirm_affinity(be->svc_id, p, be_id, be->gen, now);
	count_backend(be_id, bytes, opened, closed, 0);
	if (opened | closed) {
		if (be->flags & BE_F_P2C)
			active_add(be_id, opened ? 1 : -1);
		if (flow_report_on()) {
			__u32 kind = opened ? FLOW_EV_OPENED : FLOW_EV_CLOSED;
			nd_flow_report(&p->key, be, be_id, kind << 8 | ((flags | set) & ~clear), now);
		}
	}
	return forward(ctx, be);
}

/* dispatch_new picks a server for a packet the table has no live flow for
 * and forwards the packet. What it may record depends on the packet: a SYN
 * (or a UDP packet) takes a free or expired way or displaces the oldest
 * half-open flow (or UDP flow seen once), and is recorded half-open (UDP:
 * established, and seen once until its second packet); a stray
 * packet of an unknown TCP flow (an ACK, data) takes only a free or expired
 * way, half-open, and is established by its next packet; a FIN or RST of an
 * unknown flow is forwarded and leaves nothing. No packet displaces an
 * established or closing flow: a full bucket forwards the new flow by its
 * pick alone. */
static __always_inline int dispatch_new(struct xdp_md *ctx, struct packet *p, struct svc_info *svc,
					struct flow_lookup *fl, __u64 now, __u64 bytes)
{
	int is_tcp = p->key.proto == IPPROTO_TCP;
	int fin = is_tcp && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST));
	int opener = !is_tcp || (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	__u32 be_id = 0;
	__u32 class = fl->snap.v_class;
	/* Only an opener the table will remember goes to the service's
	 * scheduler (p2c, delay): its choice depends on the moment, and a
	 * later packet that finds no entry is picked again. Every other
	 * packet, an opener with no way it may take or a stray packet of a
	 * flow the table does not know, goes where the Maglev ring says,
	 * which a packet of the same flow finds again. So does an opener
	 * that must displace a half-open flow: the table is under pressure
	 * (a SYN flood, most likely), and a spoofed SYN must not cost the
	 * scheduler's walk over every server of the service. */
	int recorded = !fin && class <= (opener ? VICTIM_HALFOPEN : VICTIM_EXPIRED);
	int schedule = opener && recorded && class != VICTIM_HALFOPEN;

	struct backend *be = pick(svc, p, fl->hash, now, &be_id, schedule);
	if (!be) {
		struct svc_stats *ss = bpf_map_lookup_elem(&stats_service, &svc->svc_id);
		if (ss)
			ss->no_backend += 1;
		return XDP_DROP;
	}

	if (!recorded) {
		if (fin) {
			/* a close of a flow the table does not know: nothing */
		} else if (class == VICTIM_NONE) {
			count_global(G_FLOW_BUSY); /* its ways were being written */
		} else if (opener) {
			count_global(G_OPENER_UNRECORDED);
			mark_pressure(now);
		} else {
			count_global(G_STRAY_UNRECORDED);
		}
		count_backend(be_id, bytes, 0, 0, 0);
		return forward(ctx, be);
	}

	struct flow_store_args a = {
		.key = p->key,
		.last_seen = now,
		.hash = fl->hash,
		.backend = be_id,
		.gen = be->gen,
		.flags = FLOW_F_VALID,
		.way = fl->snap.v_way,
		.expect = fl->snap.v_seq,
	};
	a.flags |= is_tcp ? FLOW_F_HALFOPEN : FLOW_F_ONCE;
	if (svc->flags & SVC_F_AFFINITY)
		a.flags |= FLOW_F_STICKY;
	int opened = 0, halfopen = 0;
	if (nd_flow_store(fl->idx, &a) < 0) {
		count_global(G_FLOW_BUSY);
		/* Not remembered after all (another CPU was writing the way):
		 * where the ring says, as for any flow the table lacks. */
		__u32 ring_id;
		if (opener && (svc->flags & (SVC_F_DELAY | SVC_F_P2C)) && ring_pick(svc->svc_id, fl->hash, &ring_id) == 0) {
			struct backend *rb = backend_read(ring_id);
			if (rb && (rb->flags & BE_F_ACTIVE) && rb->svc_id == svc->svc_id) {
				be = rb;
				be_id = ring_id;
			}
		}
	} else {
		int moved = is_tcp;
		if (class == VICTIM_HALFOPEN) {
			/* A half-open flow displaced by a new one: no generation
			 * check (a stale slot's count is corrected when user
			 * space reconciles), and nothing to move when both are
			 * the same server's. A UDP flow seen once was counted
			 * open: it leaves as an expired one. */
			if (!(fl->snap.v_flags & FLOW_F_HALFOPEN))
				count_gone(fl->snap.v_backend, fl->snap.v_gen, fl->snap.v_flags);
			else if (fl->snap.v_backend == be_id && is_tcp)
				moved = 0;
			else
				halfopen_add(fl->snap.v_backend, -1);
			count_global(G_HALFOPEN_EVICTED);
			mark_pressure(now);
		} else if (class != VICTIM_FREE) {
			count_gone(fl->snap.v_backend, fl->snap.v_gen, fl->snap.v_flags);
		}
		if (is_tcp) {
			halfopen = 1;
			if (moved)
				halfopen_add(be_id, 1);
		} else {
			/* Counted open now, reported to user space (and so
			 * to the HA peers) at its second packet: a flood of
			 * spoofed datagrams costs the sync stream nothing. */
			opened = 1;
			if (be->flags & BE_F_P2C)
				active_add(be_id, 1);
		}
	}

	count_backend(be_id, bytes, opened, 0, halfopen);
	return forward(ctx, be);
}

#include "icmp.h"

SEC("xdp")
int nd_dispatch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet p = {};
	struct vip_stats *vs;

	int rc = parse_frame(data, data_end, &p);
	switch (rc) {
	case PARSE_NOT_IP:
		count_global(G_NOT_IP);
		return XDP_PASS;
	case PARSE_BAD_L3:
		count_global(G_MALFORMED);
		return XDP_PASS;
	}

	/* Most traffic on a host that is not ours costs one array read. */
	__u32 ah;
	if (!vip_filter_hit(&p.key, &ah)) {
		if (rc == PARSE_BAD_L4)
			count_global(G_MALFORMED);
		count_global(G_PASSED);
		return XDP_PASS;
	}

	if (!frame_for_us(ctx, data, data_end)) {
		count_global(G_OTHER_HOST);
		return XDP_PASS;
	}

	/* A port no service defines skips the connection table. */
	if (rc == PARSE_OK && svc_filter_hit(&p.key, ah)) {
		__u64 bytes = data_end - data;
		__u64 now = now_ns();
		struct flow_lookup fl; /* every field is written before it is read */

		fl.hash = flow_hash(&p.key, hash_seed);
		fl.idx = bucket_index(fl.hash, flow_buckets);
		fl.bucket = bpf_map_lookup_elem(&conns, &fl.idx);
		if (!fl.bucket)
			return XDP_ABORTED;
		/* Ask for the whole bucket before reading any of it: the key a
		 * lookup compares, or the way a new flow writes, then arrives
		 * with the head line instead of one memory round trip later. */
		prefetch_bucket(fl.bucket);
		int r = nd_flow_lookup(fl.idx, &p.key, fl.hash, &fl.snap, now);
		fl.way = r;
		if (r < 0 || (r & FLOW_MISS)) {
			fl.way = -1;
			if (r < 0)
				fl.snap.v_class = VICTIM_NONE;
		}
		int act = dispatch_established(ctx, &p, &fl, now, bytes);
		if (act >= 0)
			return act;

		struct svc_key sk = {};
		sk.addr = p.key.dst;
		sk.port = p.key.dport;
		sk.proto = p.key.proto;
		sk.family = p.key.family;
		struct svc_info svc;
		if (svc_find(&sk, &svc) == 0)
			return dispatch_new(ctx, &p, &svc, &fl, now, bytes);
	}

	/* Not a defined service: is it for one of our VIPs at all? */
	vs = vip_lookup(&p, ah);
	if (!vs) {
		if (rc == PARSE_BAD_L4)
			count_global(G_MALFORMED);
		count_global(G_PASSED);
		return XDP_PASS;
	}

	switch (rc) {
	case PARSE_ICMP:
		return dispatch_icmp(ctx, &p, vs);
	case PARSE_FRAGMENT:
		vs->fragments += 1;
		return XDP_DROP;
	case PARSE_BAD_L4:
		count_global(G_MALFORMED);
		return XDP_DROP;
	default: /* PARSE_OK on an undefined port, or another protocol */
		vs->filtered += 1;
		return XDP_DROP;
	}
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#include "control.h"
