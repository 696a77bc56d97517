/* The lab's XDP pass program: every frame goes on to the stack. A veth
 * delivers the frames its peer sends with XDP_TX or XDP_REDIRECT only while
 * it runs an XDP program, so the lab attaches this one, through iproute2, to
 * the bridge's end of every interface a dispatcher transmits on. Not the
 * dispatcher: internal/lab embeds the object, so that the lab (and ndctl,
 * which runs it) needs no BPF library. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int nd_lab_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
