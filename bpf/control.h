/* Programs user space runs with BPF_PROG_RUN, not attached to any
 * interface: writing the connection table under the data plane's own
 * sequence counts, and reading its clock. */
#ifndef ND_CONTROL_H
#define ND_CONTROL_H

/* nd_flow_apply applies one struct flow_op: user space's way to write the
 * connection table under the same sequence counts as the data plane.
 * Returns XDP_PASS when done, XDP_DROP when a deleted flow was not there,
 * XDP_ABORTED when the input was bad or the way was busy (try again).
 * Global, so that the verifier checks it once for every caller. */
__noinline int nd_flow_apply(const struct flow_op *op)
{
	struct flow_key key;
	struct flow_snap snap = {};

	if (!op)
		return XDP_ABORTED;
	__builtin_memcpy(&key, &op->key, sizeof(key));

	__u32 hash = flow_hash(&key, hash_seed);
	__u32 idx = bucket_index(hash, flow_buckets);
	struct flow_bucket *bucket = bpf_map_lookup_elem(&conns, &idx);
	if (!bucket)
		return XDP_ABORTED;
	int way = nd_flow_find(idx, &key, hash, &snap);
	__u64 now = now_ns();
	if (way == FLOW_BUSY)
		return XDP_ABORTED; /* a packet is writing a way the key may be in */

	if (op->op == FLOW_OP_DELETE) {
		if (way < 0)
			return XDP_DROP;
		if (nd_flow_update(idx, way, snap.seq, FLOW_CLEAR_ALL, 0) < 0)
			return XDP_ABORTED;
		count_out(snap.backend, snap.gen, snap.flags);
		return XDP_PASS;
	}
	if (op->op != FLOW_OP_UPSERT)
		return XDP_ABORTED;

	int replaced = way >= 0;
	__u32 expect = snap.seq;
	if (way < 0) {
		flow_victim_in(bucket, now, &snap);
		if (snap.v_class == VICTIM_NONE)
			return XDP_ABORTED;
		way = snap.v_way;
		expect = snap.v_seq;
	}
	struct flow_store_args a = {
		.key = key,
		.last_seen = op->idle_ns < now ? now - op->idle_ns : 0,
		.hash = hash,
		.backend = op->backend,
		.gen = op->gen,
		.flags = FLOW_F_VALID | (op->flags & FLOW_F_CLOSING),
		.way = way,
		.expect = expect,
	};
	if (nd_flow_store(idx, &a) < 0)
		return XDP_ABORTED;
	/* The counts follow what the table holds: the entry replaced or
	 * displaced leaves its server's, the new one joins its own. */
	if (replaced) {
		count_out(snap.backend, snap.gen, snap.flags);
	} else if (snap.v_class != VICTIM_FREE) {
		count_gone(snap.v_backend, snap.v_gen, snap.v_flags);
		if (snap.v_class == VICTIM_HALFOPEN)
			count_global(G_HALFOPEN_EVICTED);
		if (snap.v_class == VICTIM_LIVE)
			count_global(G_EVICTED);
	}
	if (!(a.flags & FLOW_F_CLOSING))
		count_in(op->backend, op->gen);
	return XDP_PASS;
}

/* flow_write applies one struct flow_op, given as the packet of
 * BPF_PROG_RUN (nd_flow_apply's answer). */
SEC("xdp")
int flow_write(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct flow_op op;

	if (data + sizeof(op) > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(&op, data, sizeof(op));
	return nd_flow_apply(&op);
}

/* flow_write_batch applies up to FLOW_BATCH struct flow_op, the packet of
 * one BPF_PROG_RUN, in order, and writes each one's answer (nd_flow_apply's,
 * with FLOW_DONE) over its op field: a system call for FLOW_BATCH flows
 * instead of one each, which is most of what writing a flow costs. It stops
 * after an op that must be tried again, so that user space retries it
 * before the ops that follow (two ops may name one flow). */
SEC("xdp")
int flow_write_batch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	for (int i = 0; i < FLOW_BATCH; i++) {
		struct flow_op *in = data + i * sizeof(struct flow_op);
		struct flow_op op;

		if ((void *)(in + 1) > data_end)
			break;
		__builtin_memcpy(&op, in, sizeof(op));
		int r = nd_flow_apply(&op);
		in->op = FLOW_DONE | r;
		if (r == XDP_ABORTED)
			break;
	}
	return XDP_PASS;
}

/* clock_now writes now_ns() into the first 8 bytes of its input, so that
 * user space reads the clock the connection table's timestamps use. */
SEC("xdp")
int clock_now(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 *out = data;

	if ((void *)(out + 1) > data_end)
		return XDP_ABORTED;
	*out = now_ns();
	return XDP_PASS;
}

#endif /* ND_CONTROL_H */
