/* Bounds-checked parsing of Ethernet (one optional 802.1Q/802.1ad tag),
 * IPv4 (with options), IPv6 (with extension headers), TCP and UDP. Nothing
 * here writes to the packet. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "types.h"

/* uapi has no vlan header; this is its wire layout. */
struct nd_vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

struct nd_ipv6_opt {
	__u8 nexthdr;
	__u8 hdrlen;
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* How many IPv6 extension headers we walk before calling a packet
 * malformed. Real traffic rarely carries more than one or two. */
#define MAX_IPV6_EXT 4

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IP,      /* not IPv4/IPv6: pass, not ours */
	PARSE_BAD_L3,      /* IP header unreadable: destination unknown */
	PARSE_BAD_L4,      /* destination known, transport header unreadable */
	PARSE_FRAGMENT,    /* destination known, packet is a fragment */
	PARSE_OTHER_PROTO, /* destination known, not TCP/UDP/ICMP */
	PARSE_ICMP,        /* destination known, ICMP or ICMPv6: l4 set */
};

struct packet {
	struct flow_key key; /* addresses, ports, protocol, family */
	void *l4;
	__u8 tcp_flags;
};

static __always_inline int parse_ports(struct packet *p, void *data_end)
{
	if (p->key.proto == IPPROTO_TCP) {
		struct tcphdr *th = p->l4;
		if ((void *)(th + 1) > data_end)
			return PARSE_BAD_L4;
		p->key.sport = th->source;
		p->key.dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		return PARSE_OK;
	}
	if (p->key.proto == IPPROTO_UDP) {
		struct udphdr *uh = p->l4;
		if ((void *)(uh + 1) > data_end)
			return PARSE_BAD_L4;
		p->key.sport = uh->source;
		p->key.dport = uh->dest;
		return PARSE_OK;
	}
	return PARSE_OTHER_PROTO;
}

static __always_inline int parse_ipv4(void *l3, void *data_end, struct packet *p)
{
	struct iphdr *ip = l3;

	if ((void *)(ip + 1) > data_end)
		return PARSE_BAD_L3;
	/* Read version and IHL as one byte: the iphdr bitfields' order depends
	 * on which byteorder header won, and this must not. */
	__u8 vihl = *(__u8 *)ip;
	__u32 hlen = (vihl & 0xf) * 4;
	if ((vihl >> 4) != 4 || hlen < sizeof(*ip))
		return PARSE_BAD_L3;

	p->key.family = ND_AF_INET;
	p->key.src.addr[0] = ip->saddr;
	p->key.dst.addr[0] = ip->daddr;
	p->key.proto = ip->protocol;

	/* MF set or a non-zero offset: only the first fragment has ports, so
	 * no fragment can be matched to a flow reliably. */
	if (ip->frag_off & bpf_htons(0x3fff))
		return PARSE_FRAGMENT;

	p->l4 = l3 + hlen;
	if (p->key.proto == IPPROTO_ICMP)
		return PARSE_ICMP;
	return parse_ports(p, data_end);
}

static __always_inline int parse_ipv6(void *l3, void *data_end, struct packet *p)
{
	struct ipv6hdr *ip6 = l3;

	if ((void *)(ip6 + 1) > data_end)
		return PARSE_BAD_L3;
	if ((*(__u8 *)ip6 >> 4) != 6)
		return PARSE_BAD_L3;

	p->key.family = ND_AF_INET6;
	__builtin_memcpy(&p->key.src, &ip6->saddr, 16);
	__builtin_memcpy(&p->key.dst, &ip6->daddr, 16);

	__u8 nexthdr = ip6->nexthdr;
	void *off = ip6 + 1;

#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT; i++) {
		struct nd_ipv6_opt *opt = off;

		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if ((void *)(opt + 1) > data_end)
				return PARSE_BAD_L4;
			nexthdr = opt->nexthdr;
			off += (opt->hdrlen + 1) * 8;
			continue;
		case IPPROTO_AH:
			if ((void *)(opt + 1) > data_end)
				return PARSE_BAD_L4;
			nexthdr = opt->nexthdr;
			off += (opt->hdrlen + 2) * 4;
			continue;
		case IPPROTO_FRAGMENT:
			return PARSE_FRAGMENT;
		default:
			goto done;
		}
	}
	/* Still inside the extension header chain. */
	return PARSE_BAD_L4;

done:
	p->key.proto = nexthdr;
	p->l4 = off;
	if (nexthdr == IPPROTO_ICMPV6)
		return PARSE_ICMP;
	return parse_ports(p, data_end);
}

/* parse_frame fills p and returns a parse_result. */
static __always_inline int parse_frame(void *data, void *data_end, struct packet *p)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return PARSE_BAD_L3;

	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;

	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct nd_vlan_hdr *vh = l3;
		if ((void *)(vh + 1) > data_end)
			return PARSE_BAD_L3;
		proto = vh->encapsulated_proto;
		l3 = vh + 1;
	}

	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(l3, data_end, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(l3, data_end, p);
	return PARSE_NOT_IP;
}
