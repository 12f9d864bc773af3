// SPDX-License-Identifier: BSD-2-Clause
/*
 * ntpy's kernel fast path: answer plain NTP client requests (mode 3) in XDP.
 *
 * Why: CPython cannot answer as many requests per second as chronyd, but a public
 * server's traffic is almost all plain 48-byte mode-3 requests from clients no rule
 * restricts. This program answers exactly those, in place, from a header the daemon
 * publishes; everything else is passed (XDP_PASS) to the normal socket path, where
 * ntpy's Python responder decides as it always does. Written from RFC 5905 (packet
 * format), RFC 768/8200 (UDP checksum, mandatory over IPv6) and the kernel's BPF docs.
 *
 * Answered: Ethernet + IPv4 (no options, not a fragment) or IPv6 (UDP as the next
 * header: no extension headers), UDP to one of the published ports (up to 4) with a
 * source port other than 0, exactly 48 bytes of payload, version 1..4 and mode 3, sent to one of the
 * server's own addresses listening on that port (map ntp_addrs), from a client the restrict map does not send
 * up, within its rate limit -- and only while the published state is synchronized,
 * whole (seqlock) and fresh (expiry). The reply is the request rewritten: addresses and
 * ports swapped, the NTP header from the state, checksums recomputed, then XDP_TX.
 *
 * On lo only generic XDP exists, and the reply we transmit passes this program again:
 * it is mode 4, so it is passed up to the client's socket.
 *
 * Time: served time (ntpy's clock, in NTP 32.32 format) = base_ntp + (tai - base_tai)
 * scaled by mult, where tai is bpf_ktime_get_tai_ns() (kernel >= 6.1 in XDP). The
 * daemon republishes base and mult often and sets an expiry; past it we pass.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define NTP_LEN 48

/* Counter indexes; the daemon's names for them are in daemon/xdp_maps.py. */
enum {
	C_ANSWERED = 0,
	C_PASS_SHAPE,      /* to our port, but not a plain 48-byte mode-3 request */
	C_PASS_NOT_OURS,   /* destination is not one of our addresses */
	C_PASS_UNSYNC,     /* no usable state published: unsynchronized (LI 3) or off */
	C_PASS_STALE,      /* the published state has expired */
	C_PASS_TORN,       /* the state was being written while we read it */
	C_PASS_RESTRICTED, /* the restrict map sends this client to userspace */
	C_PASS_RATELIMIT,  /* over its rate limit: the daemon drops or sends a KoD */
	C_PASS_XLEAVE,     /* may be an interleaved request: userspace owns those */
	C_LEAKED,          /* over the limit but answered anyway (one in 2^leak) */
	C_COUNT
};

/* Flags in ntp_state.flags. */
#define F_SERVE    1 /* synchronized: answer */
#define F_XLEAVE   2 /* interleaved mode is on: requests whose origin has bit 0 go up */
#define F_PORT123  4 /* restrict rules depend on source port 123: those go up */

/* Classes in the restrict trie (absent = serve). */
#define CLASS_SERVE   0
#define CLASS_LIMITED 1
#define CLASS_PASS    2

struct ntp_state {
	__u64 seq;        /* odd while the daemon writes; the record is used only if even and
			     unchanged around the copy */
	__u64 base_tai;   /* ns */
	__u64 expire_tai; /* ns: past it the state is stale */
	__u64 base_ntp;   /* served time at base_tai, NTP 32.32 */
	__u64 mult;       /* NTP units per ns, times 2^32 (includes the frequency term) */
	__u64 switch_ntp; /* from this receive time on, root dispersion is disp_next */
	__u64 ref_ts;     /* reference timestamp, network order */
	__u32 refid;      /* network order */
	__u32 root_delay; /* network order */
	__u32 disp_cur;   /* network order */
	__u32 disp_next;  /* network order */
	__u8 leap_bits;   /* LI << 6 */
	__u8 stratum;
	__u8 precision;
	__u8 flags;
	__u16 ports[4];   /* network order; 0 = unused */
	__u32 pad;
	/* rate limit (the daemon's ratelimit/discard settings) */
	__u64 token_ns;
	__u64 cap_ns;
	__u64 min_ns;
	__u32 leak_mask;
	__u32 v6_prefix;  /* IPv6 clients are keyed by this prefix (ratelimit ipv6prefix) */
};

struct lpm_key {
	__u32 prefixlen;
	__u8 addr[16]; /* IPv4 as ::ffff:a.b.c.d */
};

/* One client's bucket. The daemon reads it for a request passed up from a limited
 * client: if ``over`` grew (recently: over_tai), the kernel already found that request
 * over the limit and drew the leak, so Python only decides KoD or drop (see
 * daemon/xdp_limit.py). The two count columns feed ``ntpy clients``. */
struct bucket {
	__u64 last_tai;
	__u64 credit_ns;
	__u64 over;     /* requests passed up as over the limit */
	__u64 over_tai; /* when the last of them was passed up */
	__u64 answered; /* requests answered here (leaks included) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct ntp_state);
} ntp_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} ntp_counters SEC(".maps");

/* Our addresses; the value's bit i says the address listens on ports[i]. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct in6_addr);
	__type(value, __u8);
} ntp_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, __u8);
} ntp_restrict SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct in6_addr);
	__type(value, struct bucket);
} ntp_clients SEC(".maps");

static __always_inline int count(__u32 idx, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&ntp_counters, &idx);

	if (c)
		*c += 1;
	return verdict;
}

/* Served time at tai, NTP 32.32: delta is split so no product overflows 64 bits for
 * deltas up to 2^45 ns; mult < 2^35 (at most ~1.9x nominal rate). */
static __always_inline __u64 served_ntp(const struct ntp_state *s, __u64 tai)
{
	__u64 d = tai - s->base_tai;

	return s->base_ntp + (((d >> 16) * s->mult) >> 16) + (((d & 0xffff) * s->mult) >> 32);
}

static __always_inline __u32 fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u32)sum;
}

/* One's-complement sum of the UDP header and the 48-byte payload (checksum field
 * zeroed by the caller): 56 bytes = 14 words of 32 bits. */
static __always_inline __u64 sum_udp(const __u32 *p)
{
	__u64 sum = 0;
	int i;

#pragma unroll
	for (i = 0; i < 14; i++)
		sum += p[i];
	return sum;
}

/* The IPv6 prefix a client is keyed by: word i keeps prefix - 32 i of its bits. */
static __always_inline __u32 prefix_word(__u32 word, int bits)
{
	if (bits <= 0)
		return 0;
	if (bits >= 32)
		return word;
	return word & bpf_htonl(0xffffffffU << (32 - bits));
}

/* The token bucket of core/ratelimit.py, per client: over the limit -> 1 (pass up),
 * else 0 (answer). A new client starts with a full bucket and a previous request
 * min_ns ago, so its first request is answered. */
static __always_inline int over_limit(const struct ntp_state *s, struct in6_addr *key, __u64 now)
{
	struct bucket *b = bpf_map_lookup_elem(&ntp_clients, key);
	__u64 elapsed, credit;
	int back;

	if (!b) {
		struct bucket fresh = { .last_tai = now - s->min_ns, .credit_ns = s->cap_ns };

		bpf_map_update_elem(&ntp_clients, key, &fresh, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&ntp_clients, key);
		if (!b)
			return 1;
	}
	/* TAI went back (a step): the interval is unknown, judge by tokens alone */
	back = now < b->last_tai;
	elapsed = back ? 0 : now - b->last_tai;
	b->last_tai = now;
	credit = b->credit_ns + elapsed;
	if (credit > s->cap_ns)
		credit = s->cap_ns;
	if ((back || elapsed >= s->min_ns) && credit >= s->token_ns) {
		b->credit_ns = credit - s->token_ns;
		__sync_fetch_and_add(&b->answered, 1);
		return 0;
	}
	if (!(bpf_get_prandom_u32() & s->leak_mask)) {
		b->credit_ns = credit > s->token_ns ? credit - s->token_ns : 0;
		__sync_fetch_and_add(&b->answered, 1);
		count(C_LEAKED, 0);
		return 0;
	}
	b->credit_ns = credit;
	b->over_tai = now;
	__sync_fetch_and_add(&b->over, 1);
	return 1;
}

SEC("xdp")
int ntp_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = NULL;
	struct ipv6hdr *ip6 = NULL;
	struct udphdr *udp;
	struct in6_addr src = {}, dst = {};
	struct ntp_state st, *s;
	struct lpm_key lk = {};
	__u64 now, rx, tx, seq;
	__u32 zero = 0, *w;
	__u8 *ntp, *cls;
	__u16 port, tmp16;
	__u8 b0, version, bit, *bits;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		ip4 = (void *)(eth + 1);
		if ((void *)(ip4 + 1) > end || ip4->protocol != IPPROTO_UDP)
			return XDP_PASS;
		udp = (void *)(ip4 + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		udp = (void *)(ip6 + 1);
	} else {
		return XDP_PASS;
	}
	if ((void *)(udp + 1) > end)
		return XDP_PASS;
	s = bpf_map_lookup_elem(&ntp_state, &zero);
	if (!s)
		return XDP_PASS;
	port = udp->dest;
	if (!port)
		return XDP_PASS;
	if (port == *(volatile __u16 *)&s->ports[0])
		bit = 1;
	else if (port == *(volatile __u16 *)&s->ports[1])
		bit = 2;
	else if (port == *(volatile __u16 *)&s->ports[2])
		bit = 4;
	else if (port == *(volatile __u16 *)&s->ports[3])
		bit = 8;
	else
		return XDP_PASS;

	/* To our port: from here on every verdict is counted. */
	ntp = (void *)(udp + 1);
	/* the IP and UDP lengths below pin the payload at 48 bytes */
	if ((void *)(ntp + NTP_LEN) > end || udp->len != bpf_htons(8 + NTP_LEN) || !udp->source)
		return count(C_PASS_SHAPE, XDP_PASS);
	if (ip4) {
		if (ip4->ihl != 5 || (ip4->frag_off & bpf_htons(0x3fff)) ||
		    ip4->tot_len != bpf_htons(20 + 8 + NTP_LEN))
			return count(C_PASS_SHAPE, XDP_PASS);
		src.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
		src.in6_u.u6_addr32[3] = ip4->saddr;
		dst.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
		dst.in6_u.u6_addr32[3] = ip4->daddr;
	} else {
		if (!ip6 || ip6->payload_len != bpf_htons(8 + NTP_LEN))
			return count(C_PASS_SHAPE, XDP_PASS);
		__builtin_memcpy(&src, &ip6->saddr, 16);
		__builtin_memcpy(&dst, &ip6->daddr, 16);
		/* a v4-mapped source would meet the IPv4 rules: leave it to the daemon */
		if (!src.in6_u.u6_addr32[0] && !src.in6_u.u6_addr32[1] &&
		    src.in6_u.u6_addr32[2] == bpf_htonl(0xffff))
			return count(C_PASS_SHAPE, XDP_PASS);
	}
	b0 = ntp[0];
	version = (b0 >> 3) & 7;
	if ((b0 & 7) != 3 || version < 1 || version > 4)
		return count(C_PASS_SHAPE, XDP_PASS);
	bits = bpf_map_lookup_elem(&ntp_addrs, &dst);
	if (!bits || !(*bits & bit))
		return count(C_PASS_NOT_OURS, XDP_PASS);

	/* A consistent copy of the published state, or nothing. */
	seq = *(volatile __u64 *)&s->seq;
	asm volatile("" ::: "memory");
	__builtin_memcpy(&st, s, sizeof(st));
	asm volatile("" ::: "memory");
	if ((seq & 1) || seq != *(volatile __u64 *)&s->seq)
		return count(C_PASS_TORN, XDP_PASS);
	if (!(st.flags & F_SERVE))
		return count(C_PASS_UNSYNC, XDP_PASS);
	now = bpf_ktime_get_tai_ns();
	if (now < st.base_tai || now >= st.expire_tai)
		return count(C_PASS_STALE, XDP_PASS);
	if ((st.flags & F_XLEAVE) && (ntp[31] & 1))
		return count(C_PASS_XLEAVE, XDP_PASS);
	if ((st.flags & F_PORT123) && udp->source == bpf_htons(123))
		return count(C_PASS_RESTRICTED, XDP_PASS);

	lk.prefixlen = 128;
	__builtin_memcpy(lk.addr, &src, 16);
	cls = bpf_map_lookup_elem(&ntp_restrict, &lk);
	if (cls && *cls == CLASS_PASS)
		return count(C_PASS_RESTRICTED, XDP_PASS);
	if (cls && *cls == CLASS_LIMITED) {
		if (ip6) { /* keyed by prefix, as the daemon's limiter */
			int p = st.v6_prefix;

			src.in6_u.u6_addr32[0] = prefix_word(src.in6_u.u6_addr32[0], p);
			src.in6_u.u6_addr32[1] = prefix_word(src.in6_u.u6_addr32[1], p - 32);
			src.in6_u.u6_addr32[2] = prefix_word(src.in6_u.u6_addr32[2], p - 64);
			src.in6_u.u6_addr32[3] = prefix_word(src.in6_u.u6_addr32[3], p - 96);
		}
		if (over_limit(&st, &src, now))
			return count(C_PASS_RATELIMIT, XDP_PASS);
	}

	/* The reply, in place. */
	rx = served_ntp(&st, now) | 1;
	ntp[0] = st.leap_bits | (version << 3) | 4;
	ntp[1] = st.stratum;
	/* ntp[2], the poll, is echoed */
	ntp[3] = st.precision;
	w = (__u32 *)ntp;
	w[1] = st.root_delay;
	w[2] = rx < st.switch_ntp ? st.disp_cur : st.disp_next;
	w[3] = st.refid;
	__builtin_memcpy(ntp + 16, &st.ref_ts, 8);
	__builtin_memcpy(ntp + 24, ntp + 40, 8);
	*(__u64 *)(ntp + 32) = bpf_cpu_to_be64(rx);

	{ /* swap MAC addresses */
		__u8 mac[ETH_ALEN];

		__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	}
	tmp16 = udp->source;
	udp->source = udp->dest;
	udp->dest = tmp16;
	udp->check = 0;

	tx = served_ntp(&st, bpf_ktime_get_tai_ns()) & ~1ULL;
	*(__u64 *)(ntp + 40) = bpf_cpu_to_be64(tx);

	if (ip4) {
		__u32 a = ip4->saddr;
		__u64 sum;
		__u16 *h = (__u16 *)ip4;
		int i;

		ip4->saddr = ip4->daddr;
		ip4->daddr = a;
		ip4->ttl = 64;
		ip4->check = 0;
		sum = 0;
#pragma unroll
		for (i = 0; i < 10; i++)
			sum += h[i];
		ip4->check = ~fold(sum) & 0xffff;
		sum = (__u64)ip4->saddr + ip4->daddr + bpf_htons(IPPROTO_UDP) +
		      bpf_htons(8 + NTP_LEN);
		sum += sum_udp((__u32 *)udp);
		udp->check = ~fold(sum) & 0xffff;
		if (!udp->check)
			udp->check = 0xffff;
	} else if (ip6) {
		struct in6_addr a;
		__u64 sum = 0;
		int i;

		__builtin_memcpy(&a, &ip6->saddr, 16);
		__builtin_memcpy(&ip6->saddr, &ip6->daddr, 16);
		__builtin_memcpy(&ip6->daddr, &a, 16);
		ip6->hop_limit = 64;
#pragma unroll
		for (i = 0; i < 4; i++)
			sum += (__u64)ip6->saddr.in6_u.u6_addr32[i] +
			       ip6->daddr.in6_u.u6_addr32[i];
		sum += bpf_htonl(8 + NTP_LEN) + bpf_htonl(IPPROTO_UDP);
		sum += sum_udp((__u32 *)udp);
		udp->check = ~fold(sum) & 0xffff;
		if (!udp->check)
			udp->check = 0xffff; /* 0 means "no checksum", forbidden over IPv6 */
	}
	return count(C_ANSWERED, XDP_TX);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
