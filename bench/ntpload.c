/*
 * ntpload: a paced NTPv4 client-mode load generator for loopback benchmarks.
 *
 * Why C and not Python: the point is to measure how fast a *server* answers, so the
 * generator must be far cheaper per packet than any server it drives. One thread sends
 * paced batches with sendmmsg() and drains replies with recvmmsg(), from K sockets bound
 * to distinct 127.x source addresses (so per-client state in the server sees K clients).
 *
 * Matching: each request's transmit timestamp carries (sequence << 32 | cookie(sequence)).
 * An NTP server copies the client's transmit timestamp into the reply's origin field, so a
 * reply names the request it answers; the cookie rejects stray or corrupted packets and a
 * per-sequence slot catches duplicates.
 *
 * Latency: send time is read just before sendmmsg(); receive time is the kernel's receive
 * timestamp (SO_TIMESTAMPNS), so the figure does not depend on when this loop gets round to
 * reading the socket. Both are CLOCK_REALTIME, because that is the only clock the kernel
 * stamps packets with; over sub-second intervals on a machine whose clock nobody steps
 * (the benchmark's own servers run with -x) the difference is the true delay. Sleeping and
 * pacing use CLOCK_MONOTONIC.
 *
 * Cost: on a small VM, the generator shares cores with the server, so it keeps its own cost
 * down: connected sockets (cached route), sendmmsg()/recvmmsg(), epoll over K sockets, and
 * optionally UDP GSO (--gso N): one send of N back-to-back 48-byte requests that the kernel
 * splits into N ordinary datagrams; the server sees exactly what it would see otherwise.
 *
 * A reply counts as valid only if it arrives within --timeout-ms (default 50 ms) of its
 * request: a server whose queue keeps growing would otherwise "answer everything" from a
 * deep socket buffer during the drain, at a rate it cannot sustain.
 *
 * Honesty about the generator itself: it reports how many packets the pacing schedule
 * wanted but could not send (skipped), the achieved send rate, replies the kernel dropped
 * on *our* sockets (SO_RXQ_OVFL), and its own CPU time, so the caller can tell whether a
 * loss was the server's or the generator's.
 *
 * Bounds (hard): duration <= 10 s, rate <= 2,000,000/s, target must be in 127.0.0.0/8,
 * source addresses must be in 127.0.0.0/8.
 *
 * Output: one JSON object on stdout. Errors: a message on stderr and exit status 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_RATE 2000000.0
#define MAX_DURATION 10.0
#define MAX_SOCKETS 1024
#define NTP_LEN 48
#define BATCH 512          /* messages per sendmmsg()/recvmmsg() call */
#define RX_BUF 128         /* bytes kept per received datagram (NTP header is 48) */
#define HIST_US 200000     /* latency histogram: 1 us buckets up to 200 ms */
#define DONE UINT64_MAX    /* send-time slot marker: reply already matched */

struct opts {
    struct sockaddr_in target;
    double rate;
    double duration;
    int sockets;
    uint32_t src_base; /* host order */
    int tick_us;
    int drain_ms;
    int backlog_us;
    int gso;
    int timeout_ms;
};

struct stats {
    uint64_t sent, skipped, send_errors, send_eagain;
    uint64_t received, valid, kod_or_unsync, bad_mode, bad_origin, duplicate, runt;
    uint64_t rx_no_kernel_ts;
    uint64_t in_drain;  /* valid replies that came after sending stopped */
    uint64_t timed_out; /* replies later than --timeout-ms: answered, but too late to count */
    uint64_t rx_ovfl[MAX_SOCKETS];
    uint64_t hist_over;
    uint64_t lat_max_ns;
    long double lat_sum_ns;
};

static volatile sig_atomic_t g_stop;
static uint32_t g_key;
static uint64_t *g_sent_at; /* send time (CLOCK_REALTIME ns) per sequence, 0 = never sent */
static uint64_t g_cap;      /* number of slots in g_sent_at */
static uint64_t *g_hist;
static int g_fds[MAX_SOCKETS];

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void die(const char *msg) {
    fprintf(stderr, "ntpload: %s\n", msg);
    exit(2);
}

static uint64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static uint32_t cookie(uint32_t seq) {
    uint32_t x = seq * 2654435761u ^ g_key;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    return x;
}

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static int is_loopback(uint32_t host_order_addr) { return (host_order_addr >> 24) == 127; }

static double parse_double(const char *s, const char *name) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end) {
        fprintf(stderr, "ntpload: bad number for %s: '%s'\n", name, s);
        exit(2);
    }
    return v;
}

static void parse_target(const char *s, struct sockaddr_in *out) {
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) die("--target must be IPv4:PORT");
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &out->sin_addr) != 1) die("--target address is not IPv4");
    double port = parse_double(colon + 1, "--target port");
    if (port < 1 || port > 65535 || port != (int)port) die("--target port out of range");
    out->sin_port = htons((uint16_t)port);
    if (!is_loopback(ntohl(out->sin_addr.s_addr)))
        die("--target must be a loopback address (127.0.0.0/8): this tool never leaves the host");
}

static void usage(void) {
    fprintf(stderr,
            "usage: ntpload --target 127.x.y.z:PORT --rate PPS --duration S\n"
            "               [--sockets K] [--src 127.1.0.1] [--tick-us 100] [--drain-ms TIMEOUT+50]\n"
            "               [--backlog-us 2000] [--gso 0..64] [--timeout-ms 50]\n"
            "  rate <= %.0f/s, duration <= %.0f s, K <= %d; sources are SRC, SRC+1, ...\n",
            MAX_RATE, MAX_DURATION, MAX_SOCKETS);
    exit(2);
}

static void parse_args(int argc, char **argv, struct opts *o) {
    int have_target = 0;
    struct in_addr src;
    inet_pton(AF_INET, "127.1.0.1", &src);
    o->rate = 1000;
    o->duration = 1;
    o->sockets = 16;
    o->src_base = ntohl(src.s_addr);
    o->tick_us = 100;
    o->drain_ms = -1; /* default: timeout + 50 ms */
    o->backlog_us = 2000;
    o->gso = 0;
    o->timeout_ms = 50;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage();
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--target")) {
            parse_target(v, &o->target);
            have_target = 1;
        } else if (!strcmp(a, "--rate")) {
            o->rate = parse_double(v, a);
        } else if (!strcmp(a, "--duration")) {
            o->duration = parse_double(v, a);
        } else if (!strcmp(a, "--sockets")) {
            o->sockets = (int)parse_double(v, a);
        } else if (!strcmp(a, "--src")) {
            if (inet_pton(AF_INET, v, &src) != 1) die("--src is not an IPv4 address");
            o->src_base = ntohl(src.s_addr);
        } else if (!strcmp(a, "--tick-us")) {
            o->tick_us = (int)parse_double(v, a);
        } else if (!strcmp(a, "--drain-ms")) {
            o->drain_ms = (int)parse_double(v, a);
        } else if (!strcmp(a, "--timeout-ms")) {
            o->timeout_ms = (int)parse_double(v, a);
        } else if (!strcmp(a, "--gso")) {
            o->gso = (int)parse_double(v, a);
        } else if (!strcmp(a, "--backlog-us")) {
            o->backlog_us = (int)parse_double(v, a);
        } else {
            fprintf(stderr, "ntpload: unknown option %s\n", a);
            usage();
        }
    }
    if (!have_target) die("--target is required");
    if (!(o->rate >= 1 && o->rate <= MAX_RATE)) die("--rate must be in 1..2000000");
    if (!(o->duration > 0 && o->duration <= MAX_DURATION)) die("--duration must be in (0, 10] s");
    if (o->sockets < 1 || o->sockets > MAX_SOCKETS) die("--sockets must be in 1..1024");
    if (o->tick_us < 10 || o->tick_us > 100000) die("--tick-us must be in 10..100000");
    if (o->drain_ms == -1) o->drain_ms = o->timeout_ms + 50;
    if (o->drain_ms < 0 || o->drain_ms > 5000) die("--drain-ms must be in 0..5000");
    if (o->timeout_ms < 1 || o->timeout_ms > 5000) die("--timeout-ms must be in 1..5000");
    if (o->gso < 0 || o->gso > 64) die("--gso must be in 0..64 (0 or 1 = off)");
    if (o->backlog_us < o->tick_us || o->backlog_us > 1000000)
        die("--backlog-us must be in tick-us..1000000");
    uint32_t last = o->src_base + (uint32_t)o->sockets - 1;
    if (!is_loopback(o->src_base) || !is_loopback(last) || last < o->src_base)
        die("--src range must stay inside 127.0.0.0/8");
}

static int open_socket(uint32_t src_host_order, const struct sockaddr_in *target) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket() failed");
    int big = 4 << 20, one = 1;
    /* Large buffers so that bursts do not overflow *our* side; SO_RXQ_OVFL reports if they do. */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(src_host_order);
    sa.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
        fprintf(stderr, "ntpload: bind(%s) failed: %s\n", ip, strerror(errno));
        exit(2);
    }
    /* Connected: the kernel caches the route (cheaper sends) and filters foreign senders. */
    if (connect(fd, (const struct sockaddr *)target, sizeof *target) < 0) die("connect() failed");
    /* Kernel receive timestamps make latency independent of when this loop drains. */
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    return fd;
}

/* Receive state: reused buffers for recvmmsg(). */
#define CTRL_LEN (CMSG_SPACE(sizeof(uint32_t)) + CMSG_SPACE(sizeof(struct timespec)) + 64)
static unsigned char rx_data[BATCH][RX_BUF];
static char rx_ctrl[BATCH][CTRL_LEN];
static struct iovec rx_iov[BATCH];
static struct mmsghdr rx_msgs[BATCH];

static void record_latency(struct stats *st, uint64_t lat_ns) {
    uint64_t us = lat_ns / 1000;
    if (us < HIST_US)
        g_hist[us]++;
    else
        st->hist_over++;
    if (lat_ns > st->lat_max_ns) st->lat_max_ns = lat_ns;
    st->lat_sum_ns += (long double)lat_ns;
}

static uint64_t g_timeout_ns;

static void handle_reply(struct stats *st, const unsigned char *p, unsigned len, uint64_t rx_ns,
                         int draining) {
    st->received++;
    if (len < NTP_LEN) {
        st->runt++;
        return;
    }
    if ((p[0] & 7) != 4) {
        st->bad_mode++;
        return;
    }
    uint32_t seq = get_be32(p + 24), ck = get_be32(p + 28);
    if (seq >= g_cap || ck != cookie(seq) || g_sent_at[seq] == 0) {
        st->bad_origin++;
        return;
    }
    if (g_sent_at[seq] == DONE) {
        st->duplicate++;
        return;
    }
    uint64_t sent = g_sent_at[seq];
    g_sent_at[seq] = DONE;
    if (p[1] == 0) { /* stratum 0: kiss-o'-death or unsynchronised: answered, but not served */
        st->kod_or_unsync++;
        return;
    }
    uint64_t lat = rx_ns > sent ? rx_ns - sent : 0;
    if (lat > g_timeout_ns) { /* a queue that keeps growing is not a rate the server sustains */
        st->timed_out++;
        return;
    }
    st->valid++;
    if (draining) st->in_drain++;
    record_latency(st, lat);
}

/* Read everything queued on one socket. Sockets are connected, so only the target's
 * datagrams arrive here (the kernel drops anyone else's). */
static void drain_socket(struct stats *st, int idx, int fd, int draining) {
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            rx_iov[i].iov_base = rx_data[i];
            rx_iov[i].iov_len = RX_BUF;
            memset(&rx_msgs[i].msg_hdr, 0, sizeof rx_msgs[i].msg_hdr);
            rx_msgs[i].msg_hdr.msg_iov = &rx_iov[i];
            rx_msgs[i].msg_hdr.msg_iovlen = 1;
            rx_msgs[i].msg_hdr.msg_control = rx_ctrl[i];
            rx_msgs[i].msg_hdr.msg_controllen = CTRL_LEN;
        }
        int n = recvmmsg(fd, rx_msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) return;
        uint64_t fallback = 0;
        for (int i = 0; i < n; i++) {
            struct msghdr *h = &rx_msgs[i].msg_hdr;
            uint64_t rx_ns = 0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
                if (c->cmsg_level != SOL_SOCKET) continue;
                if (c->cmsg_type == SO_RXQ_OVFL) {
                    uint32_t drops;
                    memcpy(&drops, CMSG_DATA(c), sizeof drops);
                    if (drops > st->rx_ovfl[idx]) st->rx_ovfl[idx] = drops;
                } else if (c->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(c), sizeof ts);
                    rx_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
                }
            }
            if (!rx_ns) { /* no kernel timestamp: use the time we read it (slightly late) */
                if (!fallback) fallback = real_ns();
                rx_ns = fallback;
                st->rx_no_kernel_ts++;
            }
            handle_reply(st, rx_data[i], rx_msgs[i].msg_len, rx_ns, draining);
        }
        if (n < BATCH) return;
    }
}

/* Drain every socket that epoll says is readable; wait at most timeout_ms for the first. */
static void poll_and_drain(struct stats *st, int ep, int timeout_ms, int draining) {
    struct epoll_event ev[MAX_SOCKETS];
    int r = epoll_wait(ep, ev, MAX_SOCKETS, timeout_ms);
    for (int i = 0; i < r; i++) {
        int idx = (int)ev[i].data.u32;
        drain_socket(st, idx, g_fds[idx], draining);
    }
}

static void sleep_until(uint64_t deadline_mono_ns) {
    struct timespec ts = {(time_t)(deadline_mono_ns / 1000000000ull),
                          (long)(deadline_mono_ns % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !g_stop) {
    }
}

static uint64_t hist_percentile(uint64_t total, double q, uint64_t over_value_us) {
    if (total == 0) return 0;
    uint64_t want = (uint64_t)(q * (double)total);
    if (want >= total) want = total - 1;
    uint64_t acc = 0;
    for (uint64_t us = 0; us < HIST_US; us++) {
        acc += g_hist[us];
        if (acc > want) return us;
    }
    return over_value_us;
}

int main(int argc, char **argv) {
    struct opts o;
    parse_args(argc, argv, &o);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: let sleeps end early on Ctrl-C */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* 1 us: pacing needs sub-100 us wakeups */

    g_cap = (uint64_t)(o.rate * o.duration) + 2;
    g_sent_at = calloc(g_cap, sizeof *g_sent_at); /* pages are touched only as used */
    g_hist = calloc(HIST_US, sizeof *g_hist);
    static struct stats st;
    if (!g_sent_at || !g_hist) die("out of memory");
    g_timeout_ns = (uint64_t)o.timeout_ms * 1000000ull;
    g_key = (uint32_t)(now_ns() ^ (uint64_t)getpid() * 0x9E3779B97F4A7C15ull);

    int k = o.sockets;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1() failed");
    for (int i = 0; i < k; i++) {
        g_fds[i] = open_socket(o.src_base + (uint32_t)i, &o.target);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, g_fds[i], &ev) < 0) die("epoll_ctl() failed");
    }

    /* Requests live back to back in one buffer; with GSO one message carries up to `gso`
     * of them and the kernel splits it into separate datagrams (UDP_SEGMENT = 48). */
    static unsigned char tx_buf[BATCH * NTP_LEN];
    static struct iovec tx_iov[BATCH];
    static struct mmsghdr tx_msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        unsigned char *p = tx_buf + (size_t)i * NTP_LEN;
        memset(p, 0, NTP_LEN);
        p[0] = (0 << 6) | (4 << 3) | 3; /* LI 0, VN 4, mode 3 (client) */
        p[2] = 6;                       /* poll 2^6 */
        p[3] = (unsigned char)-20;      /* precision ~1 us */
        memset(&tx_msgs[i], 0, sizeof tx_msgs[i]);
        tx_msgs[i].msg_hdr.msg_iov = &tx_iov[i];
        tx_msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned gso = o.gso > 1 ? (unsigned)o.gso : 1;
    if (gso > 1) {
        int seg = NTP_LEN;
        for (int i = 0; i < k; i++)
            if (setsockopt(g_fds[i], SOL_UDP, UDP_SEGMENT, &seg, sizeof seg) < 0) {
                fprintf(stderr, "ntpload: UDP_SEGMENT (GSO) unavailable, sending one by one\n");
                gso = 1; /* segment size on earlier sockets is harmless: 48-byte sends */
                break;
            }
    }

    const uint64_t tick_ns = (uint64_t)o.tick_us * 1000;
    const uint64_t total = (uint64_t)(o.rate * o.duration);
    const uint64_t backlog_cap = (uint64_t)(o.rate * o.backlog_us / 1e6) + 1;
    const double cpu0 = cpu_s();
    const uint64_t start = now_ns();
    const uint64_t end_send = start + (uint64_t)(o.duration * 1e9);
    uint64_t scheduled = 0; /* packets released by the schedule: sent + skipped */
    uint64_t next_tick = start;
    int rot = 0;

    while (!g_stop && scheduled < total) {
        uint64_t t = now_ns();
        if (t >= end_send + tick_ns) break;
        uint64_t due = (uint64_t)((double)(t - start) * o.rate / 1e9) + 1;
        if (due > total) due = total;
        uint64_t want = due > scheduled ? due - scheduled : 0;
        if (want > backlog_cap) { /* we fell behind: do not burst, record what was missed */
            st.skipped += want - backlog_cap;
            scheduled += want - backlog_cap;
            want = backlog_cap;
        }
        while (want > 0) {
            unsigned n = want > BATCH ? BATCH : (unsigned)want;
            for (unsigned i = 0; i < n; i++) {
                uint32_t seq = (uint32_t)(st.sent + i);
                put_be32(tx_buf + (size_t)i * NTP_LEN + 40, seq);
                put_be32(tx_buf + (size_t)i * NTP_LEN + 44, cookie(seq));
            }
            unsigned nmsg = 0;
            for (unsigned i = 0; i < n; i += gso, nmsg++) {
                unsigned segs = n - i < gso ? n - i : gso;
                tx_iov[nmsg].iov_base = tx_buf + (size_t)i * NTP_LEN;
                tx_iov[nmsg].iov_len = (size_t)segs * NTP_LEN;
            }
            int fd = g_fds[rot];
            rot = (rot + 1) % k;
            uint64_t ts = real_ns();
            for (unsigned i = 0; i < n; i++) g_sent_at[st.sent + i] = ts;
            int r = sendmmsg(fd, tx_msgs, nmsg, MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EAGAIN || errno == ENOBUFS) st.send_eagain++;
                else st.send_errors++;
                for (unsigned i = 0; i < n; i++) g_sent_at[st.sent + i] = 0;
                break; /* retry on the next tick; the schedule still owes these */
            }
            unsigned done = 0;
            for (int m = 0; m < r; m++) done += (unsigned)(tx_iov[m].iov_len / NTP_LEN);
            for (unsigned i = done; i < n; i++) g_sent_at[st.sent + i] = 0;
            st.sent += done;
            scheduled += done;
            want -= done;
            if (done < n) break;
        }
        poll_and_drain(&st, ep, 0, 0);
        next_tick += tick_ns;
        uint64_t t2 = now_ns();
        if (next_tick < t2)
            next_tick = t2; /* behind schedule: go straight on */
        else
            sleep_until(next_tick);
    }
    const uint64_t send_end = now_ns();
    const double send_cpu = cpu_s() - cpu0;

    /* Drain: collect replies still in flight, stop early once every request is answered. */
    const uint64_t drain_deadline = send_end + (uint64_t)o.drain_ms * 1000000ull;
    while (!g_stop && st.valid + st.kod_or_unsync + st.timed_out < st.sent &&
           now_ns() < drain_deadline)
        poll_and_drain(&st, ep, 2, 1);
    const uint64_t end = now_ns();
    const double cpu_total = cpu_s() - cpu0;
    uint64_t rx_drops = 0;
    for (int i = 0; i < k; i++) {
        rx_drops += st.rx_ovfl[i];
        close(g_fds[i]);
    }
    close(ep);

    const double send_wall = (double)(send_end - start) / 1e9;
    /* The schedule releases the last request just before `duration`; a run that ends early
     * because everything was sent still spans `duration` for rate purposes. */
    const double span = send_wall > o.duration ? send_wall : o.duration;
    const double achieved = (double)st.sent / span;
    const double loss = st.sent ? 1.0 - (double)st.valid / (double)st.sent : 0.0;
    const double cpu_util = send_cpu / span;
    const uint64_t nlat = st.valid;
    const uint64_t over_us = st.lat_max_ns / 1000;
    char reasons[512] = "";
    if (st.sent < (uint64_t)(0.97 * (double)total))
        strcat(reasons, "\"could not send at the target rate\",");
    if (st.skipped > 3 * total / 100) strcat(reasons, "\"fell behind the pacing schedule\",");
    if (rx_drops > 0) strcat(reasons, "\"replies dropped on the generator's own sockets\",");
    if (cpu_util > 0.90) strcat(reasons, "\"generator CPU saturated\",");
    size_t rl = strlen(reasons);
    if (rl) reasons[rl - 1] = 0;

    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &o.target.sin_addr, ip, sizeof ip);
    printf("{\"target\": \"%s:%u\", \"rate_target\": %.0f, \"duration_s\": %.3f, \"sockets\": %d,"
           " \"tick_us\": %d, \"timeout_ms\": %d,\n",
           ip, ntohs(o.target.sin_port), o.rate, o.duration, k, o.tick_us, o.timeout_ms);
    printf(" \"scheduled\": %" PRIu64 ", \"sent\": %" PRIu64 ", \"skipped\": %" PRIu64
           ", \"send_eagain\": %" PRIu64 ", \"send_errors\": %" PRIu64 ",\n",
           total, st.sent, st.skipped, st.send_eagain, st.send_errors);
    printf(" \"received\": %" PRIu64 ", \"valid\": %" PRIu64 ", \"in_drain\": %" PRIu64 ", \"timed_out\": %" PRIu64
           ", \"kod_or_unsync\": %" PRIu64 ", \"bad_mode\": %" PRIu64 ", \"bad_origin\": %" PRIu64
           ", \"duplicate\": %" PRIu64 ", \"runt\": %" PRIu64 ", \"rx_no_kernel_ts\": %" PRIu64
           ",\n",
           st.received, st.valid, st.in_drain, st.timed_out, st.kod_or_unsync, st.bad_mode, st.bad_origin,
           st.duplicate, st.runt, st.rx_no_kernel_ts);
    printf(" \"gen_rx_drops\": %" PRIu64 ", \"loss\": %.6f, \"send_wall_s\": %.6f, \"wall_s\": %.6f,"
           " \"achieved_rate\": %.1f,\n",
           rx_drops, loss, send_wall, (double)(end - start) / 1e9, achieved);
    printf(" \"latency_us\": {\"p50\": %" PRIu64 ", \"p90\": %" PRIu64 ", \"p99\": %" PRIu64
           ", \"max\": %" PRIu64 ", \"mean\": %.1f, \"over_200ms\": %" PRIu64 "},\n",
           hist_percentile(nlat, 0.50, over_us), hist_percentile(nlat, 0.90, over_us),
           hist_percentile(nlat, 0.99, over_us), over_us,
           nlat ? (double)(st.lat_sum_ns / (long double)nlat) / 1000.0 : 0.0, st.hist_over);
    printf(" \"gen_cpu_s\": %.6f, \"gen_cpu_send_s\": %.6f, \"gen_cpu_util\": %.4f,"
           " \"interrupted\": %s,\n",
           cpu_total, send_cpu, cpu_util, g_stop ? "true" : "false");
    printf(" \"gso\": %u, \"generator_limited\": %s, \"generator_limit_reasons\": [%s]}\n",
           gso, reasons[0] ? "true" : "false", reasons);
    free(g_sent_at);
    free(g_hist);
    return 0;
}
