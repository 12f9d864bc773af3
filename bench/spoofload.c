/*
 * spoofload: NTP mode-3 requests from many distinct spoofed 127/8 source addresses.
 *
 * Why: a server's per-client state (rate-limit table, MRU list) must stay bounded when a
 * flood comes from millions of source addresses, as spoofed floods on the Internet do. A
 * normal socket can only send from addresses the host owns, and binding a million sockets
 * is not practical; a raw socket with our own IP header (IPPROTO_RAW implies IP_HDRINCL)
 * can put any source address in each packet. On loopback the whole 127.0.0.0/8 is local,
 * so every such packet is delivered, and the server's replies go back to 127.x addresses
 * where nobody listens: nothing leaves the machine.
 *
 * Sources: request i comes from 127.A.B.C with A = 1 + i % 254 and B.C = i / 254, so
 * consecutive requests spread over the /8, 127.0.0.x (127.0.0.1 is the real client) and
 * 127.255.x.x are never used, and up to 254 * 65536 = 16,646,144 addresses are distinct.
 * --first N starts at index N, so repeated runs can use fresh addresses. Source ports are
 * 1024 + i % 64000 (never 0: a server drops port 0), or all --sport P: then a caller can
 * bind a wildcard socket on P to swallow the replies, which costs the server's kernel less
 * than the ICMP port-unreachable every reply to a closed port would otherwise trigger.
 *
 * Packets: IPv4 header (the kernel fills the total length, id and header checksum), UDP
 * with a correct checksum, and a 48-byte NTPv4 client request whose transmit timestamp is
 * the request index. Sent with sendmmsg() in batches, paced to --rate per second.
 *
 * Bounds (hard): the target must be in 127.0.0.0/8, count <= 16,646,144, rate <=
 * 2,000,000/s, duration <= 120 s (the run stops at whichever comes first). Needs root or
 * CAP_NET_RAW. Output: one JSON object on stdout. Errors: message on stderr, exit 2.
 *
 * Build: gcc -O2 -Wall -o bench/build/spoofload bench/spoofload.c
 * Use:   spoofload --target 127.0.0.1:PORT [--count 1000000] [--rate 50000]
 *                  [--duration 60] [--first 0] [--sport P]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NTP_LEN 48
#define PKT_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + NTP_LEN)
#define BATCH 256
#define MAX_COUNT (254ULL * 65536ULL)
#define MAX_RATE 2000000.0
#define MAX_DURATION 120.0
#define TICK_NS 1000000LL /* pacing granularity: 1 ms */

struct opts {
    struct sockaddr_in target;
    uint64_t count;
    uint64_t first;
    double rate;
    double duration;
    uint16_t sport; /* 0: vary by request */
};

static void die(const char *msg) {
    fprintf(stderr, "spoofload: %s\n", msg);
    exit(2);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t parse_u64(const char *s, const char *what) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || *s == '-') {
        fprintf(stderr, "spoofload: bad %s: %s\n", what, s);
        exit(2);
    }
    return (uint64_t)v;
}

static double parse_double(const char *s, const char *what) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *s == '\0' || *end != '\0' || !(v > 0)) {
        fprintf(stderr, "spoofload: bad %s: %s\n", what, s);
        exit(2);
    }
    return v;
}

static void parse_target(const char *text, struct sockaddr_in *out) {
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof host) die("--target must be 127.x.y.z:PORT");
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    uint64_t port = parse_u64(colon + 1, "port");
    if (port == 0 || port > 65535) die("port must be 1..65535");
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &out->sin_addr) != 1) die("--target must be an IPv4 address");
    if ((ntohl(out->sin_addr.s_addr) >> 24) != 127)
        die("refusing a target outside 127.0.0.0/8: this tool is for loopback only");
}

static struct opts parse_args(int argc, char **argv) {
    struct opts o = {.count = 1000000, .first = 0, .rate = 50000, .duration = 60};
    int have_target = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "spoofload: %s needs a value\n", a);
            exit(2);
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--target")) {
            parse_target(v, &o.target);
            have_target = 1;
        } else if (!strcmp(a, "--count")) {
            o.count = parse_u64(v, "count");
        } else if (!strcmp(a, "--first")) {
            o.first = parse_u64(v, "first");
        } else if (!strcmp(a, "--rate")) {
            o.rate = parse_double(v, "rate");
        } else if (!strcmp(a, "--duration")) {
            o.duration = parse_double(v, "duration");
        } else if (!strcmp(a, "--sport")) {
            uint64_t p = parse_u64(v, "sport");
            if (p == 0 || p > 65535) die("--sport must be 1..65535");
            o.sport = (uint16_t)p;
        } else {
            fprintf(stderr, "spoofload: unknown option %s\n", a);
            exit(2);
        }
    }
    if (!have_target) die("--target 127.x.y.z:PORT is required");
    if (o.count == 0 || o.first + o.count > MAX_COUNT) die("--first + --count must be 1..16646144");
    if (o.rate > MAX_RATE) die("--rate must be <= 2000000");
    if (o.duration > MAX_DURATION) die("--duration must be <= 120");
    return o;
}

/* Source address of request i, host order: 127.(1 + i % 254).(i / 254 >> 8).(i / 254). */
static uint32_t source_of(uint64_t i) {
    uint32_t a = 1 + (uint32_t)(i % 254);
    uint32_t bc = (uint32_t)((i / 254) & 0xFFFF);
    return (127u << 24) | (a << 16) | bc;
}

static uint32_t sum16(const void *data, size_t len, uint32_t acc) {
    const uint8_t *p = data;
    for (size_t k = 0; k + 1 < len; k += 2) acc += (uint32_t)(p[k] << 8 | p[k + 1]);
    if (len & 1) acc += (uint32_t)p[len - 1] << 8;
    return acc;
}

static uint16_t fold(uint32_t acc) {
    while (acc >> 16) acc = (acc & 0xFFFF) + (acc >> 16);
    return (uint16_t)~acc;
}

static void build(uint8_t *pkt, uint64_t i, const struct sockaddr_in *dst, uint16_t sport) {
    struct iphdr *ip = (struct iphdr *)pkt;
    struct udphdr *udp = (struct udphdr *)(pkt + sizeof *ip);
    uint8_t *ntp = pkt + sizeof *ip + sizeof *udp;
    memset(pkt, 0, PKT_LEN);
    ip->version = 4;
    ip->ihl = 5;
    ip->ttl = 64;
    ip->protocol = IPPROTO_UDP;
    ip->saddr = htonl(source_of(i));
    ip->daddr = dst->sin_addr.s_addr;
    ip->tot_len = htons((uint16_t)PKT_LEN); /* the kernel rewrites it anyway */
    udp->source = htons(sport ? sport : (uint16_t)(1024 + i % 64000));
    udp->dest = dst->sin_port;
    udp->len = htons((uint16_t)(sizeof *udp + NTP_LEN));
    ntp[0] = 0x23; /* LI 0, VN 4, mode 3 */
    ntp[2] = 6;    /* poll 2^6 s */
    for (int k = 0; k < 8; k++) ntp[40 + k] = (uint8_t)(i >> (56 - 8 * k));
    /* UDP checksum over the pseudo header (addresses, protocol, length) and the datagram. */
    uint32_t acc = sum16(&ip->saddr, 8, 0);
    acc += IPPROTO_UDP + (uint32_t)(sizeof *udp + NTP_LEN);
    acc = sum16(udp, sizeof *udp + NTP_LEN, acc);
    uint16_t c = fold(acc);
    udp->check = htons(c ? c : 0xFFFF);
}

int main(int argc, char **argv) {
    struct opts o = parse_args(argc, argv);
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (fd < 0) {
        fprintf(stderr, "spoofload: raw socket: %s (needs root or CAP_NET_RAW)\n",
                strerror(errno));
        return 2;
    }
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

    static uint8_t bufs[BATCH][PKT_LEN];
    static struct iovec iov[BATCH];
    static struct mmsghdr msgs[BATCH];
    for (int k = 0; k < BATCH; k++) {
        iov[k].iov_base = bufs[k];
        iov[k].iov_len = PKT_LEN;
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
        msgs[k].msg_hdr.msg_name = &o.target;
        msgs[k].msg_hdr.msg_namelen = sizeof o.target;
    }

    uint64_t sent = 0, retries = 0, errors = 0;
    int64_t start = now_ns();
    int64_t deadline = start + (int64_t)(o.duration * 1e9);
    int timed_out = 0;
    while (sent < o.count) {
        int64_t t = now_ns();
        if (t >= deadline) {
            timed_out = 1;
            break;
        }
        /* Pacing: never ahead of rate * elapsed; sleep a tick when caught up. */
        uint64_t allowed = (uint64_t)((double)(t - start) * o.rate / 1e9) + 1;
        if (allowed > o.count) allowed = o.count;
        if (sent >= allowed) {
            struct timespec ts = {0, TICK_NS};
            nanosleep(&ts, NULL);
            continue;
        }
        uint64_t n = allowed - sent;
        if (n > BATCH) n = BATCH;
        for (uint64_t k = 0; k < n; k++) build(bufs[k], o.first + sent + k, &o.target, o.sport);
        int r = sendmmsg(fd, msgs, (unsigned)n, 0);
        if (r < 0) {
            if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) {
                retries++;
                struct timespec ts = {0, 100000};
                nanosleep(&ts, NULL);
                continue;
            }
            errors++;
            fprintf(stderr, "spoofload: sendmmsg: %s\n", strerror(errno));
            if (errors > 100) break;
            continue;
        }
        sent += (uint64_t)r;
    }
    double secs = (double)(now_ns() - start) / 1e9;
    char first_src[INET_ADDRSTRLEN] = "", last_src[INET_ADDRSTRLEN] = "";
    struct in_addr a;
    a.s_addr = htonl(source_of(o.first));
    inet_ntop(AF_INET, &a, first_src, sizeof first_src);
    a.s_addr = htonl(source_of(o.first + (sent ? sent - 1 : 0)));
    inet_ntop(AF_INET, &a, last_src, sizeof last_src);
    printf("{\"sent\": %" PRIu64 ", \"distinct_sources\": %" PRIu64 ", \"seconds\": %.3f, "
           "\"rate\": %.0f, \"retries\": %" PRIu64 ", \"errors\": %" PRIu64
           ", \"timed_out\": %s, \"first_source\": \"%s\", \"last_source\": \"%s\"}\n",
           sent, sent, secs, secs > 0 ? (double)sent / secs : 0.0, retries, errors,
           timed_out ? "true" : "false", first_src, last_src);
    close(fd);
    return errors > 100 ? 2 : 0;
}
