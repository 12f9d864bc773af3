/*
 * nts_keload: NTS-KE (RFC 8915 section 4) load generator for bench/nts_rate.py.
 *
 * Why C: the Python clients (pyOpenSSL) cost ~0.85 ms of generator CPU per exchange, so
 * one generator core saturated at ~1,200 exchanges/s, below what either server can do on
 * its core; the comparison measured the generator. This client keeps --conc connections
 * in flight on one epoll loop, each a whole exchange: TCP connect from the next source
 * address, TLS 1.3 handshake (ALPN ntske/1, certificate checked against --ca with the
 * target's IP SAN), the request given in hex by the caller (ntpy's own client_request()),
 * and the response read until its End of Message record. A response counts as ok only if
 * it parses record by record, has no Error record and carries --cookies New Cookie
 * records; anything else is counted by reason. Then the connection closes and a new one
 * starts, until --duration is up.
 *
 * Safety: the target must be in 127.0.0.0/8, at most 256 connections, at most 10 s.
 * Output: one JSON line on stdout (ok, failed, per-reason counts, CPU seconds, elapsed).
 *
 * Build: gcc -O2 -Wall -Wextra -o nts_keload nts_keload.c -lssl -lcrypto (nts_load.py).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONC 256
#define MAX_SOURCES 256
#define RESP_MAX 65536
#define TIMEOUT_NS 5000000000LL

enum { E_CONNECT, E_TLS, E_ALPN, E_CLOSED, E_PARSE, E_ERROR_RECORD, E_COOKIES, E_TIMEOUT,
       E_COUNT };
static const char *reason_names[E_COUNT] = {"connect", "tls", "alpn", "closed", "parse",
                                            "error_record", "cookies", "timeout"};

struct conn {
    int fd;
    SSL *ssl;
    int sent;      /* request bytes written */
    int hs_done;
    long long deadline;
    size_t have;
    unsigned char buf[RESP_MAX];
};

static SSL_CTX *ctx;
static struct sockaddr_in target;
static struct in_addr sources[MAX_SOURCES];
static int nsources, next_source;
static unsigned char request[1024];
static int request_len;
static int want_cookies = 8;
static long long ok_count, failed[E_COUNT];
static int ep;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *msg) {
    fprintf(stderr, "nts_keload: %s\n", msg);
    exit(2);
}

/* 1: a whole message with End of Message, 0: more to read, <0: a reason, negated. */
static int parse_response(const unsigned char *p, size_t n) {
    size_t off = 0;
    int cookies = 0, error = 0;
    while (off + 4 <= n) {
        unsigned type = ((unsigned)p[off] << 8 | p[off + 1]) & 0x7fff;
        size_t len = (size_t)p[off + 2] << 8 | p[off + 3];
        if (off + 4 + len > n)
            return 0;
        if (type == 0) {
            if (len != 0)
                return -E_PARSE;
            if (error)
                return -E_ERROR_RECORD;
            return cookies == want_cookies ? 1 : -E_COOKIES;
        }
        if (type == 2)
            error = 1;
        if (type == 5)
            cookies++;
        off += 4 + len;
    }
    return 0;
}

static void set_events(struct conn *c, uint32_t ev) {
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
        die("epoll_ctl MOD");
}

static void start(struct conn *c) {
    memset(c, 0, offsetof(struct conn, buf));
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        die("socket");
    int one = 1;
    setsockopt(c->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr = sources[next_source]};
    next_source = (next_source + 1) % nsources;
    if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0)
        die("bind to a source address");
    c->deadline = now_ns() + TIMEOUT_NS;
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), inet_ntoa(target.sin_addr));
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e) < 0)
        die("epoll_ctl ADD");
    if (connect(c->fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS)
        c->hs_done = -1; /* reported by the first step */
}

static void finish(struct conn *c, int reason) {
    if (reason < 0)
        ok_count++;
    else
        failed[reason]++;
    SSL_free(c->ssl);
    close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
}

/* Drive one connection as far as it goes; returns 1 when it ended. */
static int step(struct conn *c) {
    if (c->hs_done < 0) {
        finish(c, E_CONNECT);
        return 1;
    }
    if (!c->hs_done) {
        ERR_clear_error();
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                set_events(c, EPOLLIN);
                return 0;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                set_events(c, EPOLLOUT);
                return 0;
            }
            finish(c, E_TLS);
            return 1;
        }
        const unsigned char *alpn;
        unsigned alpn_len;
        SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
        if (alpn_len != 7 || memcmp(alpn, "ntske/1", 7) != 0) {
            finish(c, E_ALPN);
            return 1;
        }
        c->hs_done = 1;
    }
    while (c->sent < request_len) {
        int r = SSL_write(c->ssl, request + c->sent, request_len - c->sent);
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                set_events(c, e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN);
                return 0;
            }
            finish(c, E_TLS);
            return 1;
        }
        c->sent += r;
        set_events(c, EPOLLIN);
    }
    for (;;) {
        if (c->have == RESP_MAX) {
            finish(c, E_PARSE);
            return 1;
        }
        int r = SSL_read(c->ssl, c->buf + c->have, (int)(RESP_MAX - c->have));
        if (r > 0) {
            c->have += (size_t)r;
            int p = parse_response(c->buf, c->have);
            if (p != 0) {
                finish(c, p > 0 ? -1 : -p);
                return 1;
            }
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            return 0;
        finish(c, e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL ? E_CLOSED : E_TLS);
        return 1;
    }
}

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

int main(int argc, char **argv) {
    const char *addr = NULL, *ca = NULL, *srcs = NULL, *hex = NULL;
    int port = 0, conc = 16;
    double duration = 3.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--addr")) addr = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ca")) ca = argv[i + 1];
        else if (!strcmp(argv[i], "--sources")) srcs = argv[i + 1];
        else if (!strcmp(argv[i], "--request")) hex = argv[i + 1];
        else if (!strcmp(argv[i], "--conc")) conc = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--duration")) duration = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--cookies")) want_cookies = atoi(argv[i + 1]);
        else die("unknown option");
    }
    if (!addr || !port || !ca || !srcs || !hex)
        die("usage: --addr A --port P --ca FILE --sources A,B,.. --request HEX "
            "[--conc N] [--duration S] [--cookies N]");
    if (inet_pton(AF_INET, addr, &target.sin_addr) != 1 || (ntohl(target.sin_addr.s_addr) >> 24) != 127)
        die("refusing a target outside 127.0.0.0/8");
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    if (conc < 1 || conc > MAX_CONC || !(duration > 0 && duration <= 10))
        die("need 1 <= --conc <= 256 and 0 < --duration <= 10");
    size_t hl = strlen(hex);
    if (hl % 2 || hl / 2 > sizeof request)
        die("bad --request");
    for (size_t i = 0; i < hl; i += 2) {
        int a = hexval(hex[i]), b = hexval(hex[i + 1]);
        if (a < 0 || b < 0)
            die("bad --request hex");
        request[request_len++] = (unsigned char)(a << 4 | b);
    }
    char *list = strdup(srcs);
    for (char *tok = strtok(list, ","); tok && nsources < MAX_SOURCES; tok = strtok(NULL, ","))
        if (inet_pton(AF_INET, tok, &sources[nsources]) == 1)
            nsources++;
    free(list);
    if (!nsources)
        die("no usable --sources");

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    static const unsigned char alpn[] = "\x07ntske/1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        die("cannot load --ca");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);

    ep = epoll_create1(0);
    static struct conn conns[MAX_CONC];
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    long long t0 = now_ns(), end = t0 + (long long)(duration * 1e9);
    for (int i = 0; i < conc; i++)
        start(&conns[i]);
    int live = conc;
    struct epoll_event evs[MAX_CONC];
    long long last_sweep = t0;
    while (live > 0) {
        int n = epoll_wait(ep, evs, MAX_CONC, 50);
        long long now = now_ns();
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->fd < 0 || !step(c))
                continue;
            if (now < end)
                start(c);
            else
                live--;
        }
        if (now - last_sweep > 100000000LL) {
            last_sweep = now;
            for (int i = 0; i < conc; i++) {
                struct conn *c = &conns[i];
                if (c->fd >= 0 && c->deadline < now) {
                    finish(c, E_TIMEOUT);
                    if (now < end)
                        start(c);
                    else
                        live--;
                }
            }
        }
    }
    long long t1 = now_ns();
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec)
        + ((ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec)) / 1e6;
    long long nfailed = 0;
    for (int i = 0; i < E_COUNT; i++)
        nfailed += failed[i];
    printf("{\"ok\": %lld, \"failed\": %lld, \"cpu\": %.4f, \"elapsed\": %.4f, \"reasons\": {",
           ok_count, nfailed, cpu, (t1 - t0) / 1e9);
    for (int i = 0, first = 1; i < E_COUNT; i++)
        if (failed[i]) {
            printf("%s\"%s\": %lld", first ? "" : ", ", reason_names[i], failed[i]);
            first = 0;
        }
    printf("}}\n");
    SSL_CTX_free(ctx);
    return 0;
}
