/* The data plane's clock and how often a flow's last_seen is refreshed. */
#ifndef ND_CLOCK_H
#define ND_CLOCK_H

/* now_ns is the data plane's clock: jiffies, which the verifier inlines as
 * one load, in nanoseconds. A few milliseconds of resolution is plenty for
 * idle timeouts, and bpf_ktime_get_coarse_ns costs 20-40 ns a packet. */
static __always_inline __u64 now_ns(void)
{
	return bpf_jiffies64() * jiffy_ns;
}

/* last_seen is refreshed at most this often: a write per packet would bounce
 * the entry's cache line between CPUs for nothing. */
#define REFRESH_NS 1000000000ull
#define NS_PER_SEC 1000000000ull
#endif /* ND_CLOCK_H */
