/*
 * openloop: an open-loop HTTP/1.1 load generator (constant throughput, like wrk2's -R mode)
 * for bench/scenarios/http.py. Request i is due at t0 + i / rate (CLOCK_MONOTONIC, ns); a due
 * request is written on a free keep-alive connection, due requests going out in order; one
 * request is in flight per connection. Latency runs from the due time, so a request that waits
 * for a free connection or a late wake-up counts as slow (no coordinated omission); service
 * time runs from the actual write, send lag from the due time to the write. Requests due in
 * the first --warmup seconds are not measured. Scheduling stops after warmup + duration;
 * requests still unsent --drain seconds later are dropped, and responses still missing another
 * --drain seconds after that count as errors (as do status >= 400 and socket errors).
 *
 * Single-threaded (one epoll loop; a timerfd armed at the next due time, an hrtimer without
 * slack, so it sleeps until then and wakes on time), so nothing is shared; every buffer is owned by main() for the whole run. The JSON it prints
 * (--json) has the keys of bench/scenarios/http.py:_open_loop, percentiles as numpy.percentile
 * (method "linear") computes them. Linux only, libc only:
 *
 *   cc -O2 -Wall -Wextra -std=c11 -o openloop bench/openloop.c
 *   openloop --port P --rate R --duration S --warmup W --connections N --request FILE [--json]
 *   openloop --selftest-percentiles < numbers   (p50 p90 p99 p99.9 of the numbers, as JSON)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* Response head bytes kept per connection; a longer head is a protocol error. */
#define HEAD_CAP 16384
/* Connections are at most this many (one epoll event slot each, plus the timer). */
#define MAX_CONNS 4096
/* Gap between clock start-up and the first due time (as the Python generator). */
#define START_DELAY_NS 20000000LL
#define TIMER_TAG UINT64_MAX

struct options {
    int port;
    double rate_per_s;
    double duration_s;
    double warmup_s;
    double drain_s;
    int connections;
    const char *request_path;
    int json;
};

/* One keep-alive connection. `index` is the request in flight, -1 when the connection is free. */
struct conn {
    int fd;
    int64_t index;
    int64_t due_ns;
    int64_t sent_ns;
    size_t written;   /* request bytes written so far */
    size_t head_len;  /* response head bytes buffered in `head` */
    int in_body;      /* the head is parsed; `body_left` bytes of body remain */
    int64_t body_left;
    int status;
    int close_after;  /* the response said "Connection: close" */
    char head[HEAD_CAP];
};

struct samples {
    int64_t *latency_ns;  /* done - due */
    int64_t *service_ns;  /* done - sent */
    int64_t *lag_ns;      /* sent - due */
    size_t count;
};

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("openloop: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- percentiles ------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile(sorted, q) with the default method "linear", including numpy's order of
 * float operations (virtual index (n - 1) * q / 100, and its two-sided lerp), so both agree to
 * the last bit. `sorted` holds n >= 1 values in ascending order. */
static double percentile_sorted(const double *sorted, size_t n, double q) {
    double virtual_index = (double)(n - 1) * (q / 100.0);
    if (virtual_index >= (double)(n - 1)) return sorted[n - 1];
    if (virtual_index < 0) return sorted[0];
    size_t i = (size_t)virtual_index;  /* floor: the index is >= 0 here */
    double below = (double)i;
    double gamma = virtual_index - below;
    double a = sorted[i], b = sorted[i + 1];
    double diff = b - a;
    return gamma >= 0.5 ? b - diff * (1.0 - gamma) : a + diff * gamma;
}

/* Values in µs (ns / 1e3, as the Python path divides), sorted; NULL when n == 0. */
static double *sorted_us(const int64_t *ns, size_t n) {
    if (n == 0) return NULL;
    double *us = malloc(n * sizeof *us);
    if (us == NULL) die("out of memory for %zu samples", n);
    for (size_t i = 0; i < n; i++) us[i] = (double)ns[i] / 1e3;
    qsort(us, n, sizeof *us, cmp_double);
    return us;
}

/* A JSON float as Python's json writes one (500.0, NaN), or null for a missing value. */
static void put_number(const char *key, double v, int missing_as_null, int last) {
    if (isnan(v)) {
        printf("\"%s\": %s", key, missing_as_null ? "null" : "NaN");
    } else {
        char num[40];
        snprintf(num, sizeof num, "%.17g", v);
        int integral = strpbrk(num, ".eEin") == NULL;
        printf("\"%s\": %s%s", key, num, integral ? ".0" : "");
    }
    fputs(last ? "" : ", ", stdout);
}

static int selftest_percentiles(void) {
    size_t n = 0, cap = 1024;
    double *v = malloc(cap * sizeof *v);
    if (v == NULL) die("out of memory");
    double x;
    while (scanf("%lf", &x) == 1) {
        if (n == cap) {
            cap *= 2;
            v = realloc(v, cap * sizeof *v);
            if (v == NULL) die("out of memory");
        }
        v[n++] = x;
    }
    if (n == 0) die("--selftest-percentiles: no numbers on stdin");
    qsort(v, n, sizeof *v, cmp_double);
    printf("[%.17g, %.17g, %.17g, %.17g]\n", percentile_sorted(v, n, 50),
           percentile_sorted(v, n, 90), percentile_sorted(v, n, 99),
           percentile_sorted(v, n, 99.9));
    free(v);
    return 0;
}

/* ---- options and set-up ----------------------------------------------------------------- */

static double parse_double(const char *name, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) die("%s: '%s' is not a number", name, s);
    return v;
}

static void usage(void) {
    fputs("usage: openloop --port P --rate R --duration S --warmup W --connections N "
          "--request FILE [--drain S] [--json]\n"
          "       openloop --selftest-percentiles < numbers\n",
          stderr);
    exit(2);
}

static struct options parse_options(int argc, char **argv) {
    struct options o = {0, 0, 0, 0, 5.0, 0, NULL, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--json") == 0) {
            o.json = 1;
            continue;
        }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (strcmp(a, "--port") == 0) o.port = (int)parse_double(a, v);
        else if (strcmp(a, "--rate") == 0) o.rate_per_s = parse_double(a, v);
        else if (strcmp(a, "--duration") == 0) o.duration_s = parse_double(a, v);
        else if (strcmp(a, "--warmup") == 0) o.warmup_s = parse_double(a, v);
        else if (strcmp(a, "--drain") == 0) o.drain_s = parse_double(a, v);
        else if (strcmp(a, "--connections") == 0) o.connections = (int)parse_double(a, v);
        else if (strcmp(a, "--request") == 0) o.request_path = v;
        else usage();
    }
    if (o.port <= 0 || o.port > 65535) die("--port: expected 1..65535, got %d", o.port);
    if (o.rate_per_s <= 0) die("--rate: expected requests/s > 0, got %g", o.rate_per_s);
    if (o.duration_s <= 0) die("--duration: expected seconds > 0, got %g", o.duration_s);
    if (o.warmup_s < 0) die("--warmup: expected seconds >= 0, got %g", o.warmup_s);
    if (o.drain_s < 0) die("--drain: expected seconds >= 0, got %g", o.drain_s);
    if (o.connections < 1 || o.connections > MAX_CONNS)
        die("--connections: expected 1..%d, got %d", MAX_CONNS, o.connections);
    if (o.request_path == NULL) die("--request FILE is required (the raw HTTP/1.1 request)");
    return o;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) die("--request %s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (buf == NULL) die("out of memory");
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (buf == NULL) die("out of memory");
        }
    }
    if (ferror(f)) die("--request %s: read error", path);
    fclose(f);
    if (n == 0) die("--request %s is empty", path);
    *len = n;
    return buf;
}

/* A blocking connect to 127.0.0.1:port, then non-blocking with TCP_NODELAY (as asyncio). */
static int open_conn(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
        die("non-blocking socket: %s", strerror(errno));
    return fd;
}

/* ---- the run ---------------------------------------------------------------------------- */

struct run {
    struct options opt;
    const char *request;
    size_t request_len;
    int epoll_fd;
    struct conn *conns;
    int *free_stack;  /* indices of free, live connections (most recently freed last) */
    int free_count;
    int live;         /* connections with an open socket */
    int64_t inflight;
    int64_t n_warm;
    struct samples s;
    int64_t errors;
    int64_t last_done_ns;
};

static void watch(struct run *r, int slot, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)slot};
    if (epoll_ctl(r->epoll_fd, op, r->conns[slot].fd, &ev) != 0)
        die("epoll_ctl: %s", strerror(errno));
}

static void conn_clear(struct conn *c) {
    c->index = -1;
    c->written = 0;
    c->head_len = 0;
    c->in_body = 0;
    c->body_left = 0;
    c->status = 0;
    c->close_after = 0;
}

/* Closes the slot's socket and opens a fresh one in its place; the slot stays wherever it is
 * (free stack or not). A slot whose reconnect fails is dead: it leaves the free stack. */
static void reconnect(struct run *r, int slot) {
    struct conn *c = &r->conns[slot];
    close(c->fd);  /* also removes it from the epoll set */
    c->fd = open_conn(r->opt.port);
    if (c->fd >= 0) {
        watch(r, slot, EPOLLIN, EPOLL_CTL_ADD);
        return;
    }
    r->live--;
    for (int k = 0; k < r->free_count; k++) {
        if (r->free_stack[k] == slot) {
            r->free_stack[k] = r->free_stack[--r->free_count];
            break;
        }
    }
}

/* The request in flight on `slot` ended: `ok` with a whole response, else after a socket or
 * protocol error (counted as an error; the connection is replaced). The slot goes back on the
 * free stack if it is still live. */
static void finish(struct run *r, int slot, int ok) {
    struct conn *c = &r->conns[slot];
    int64_t done = now_ns();
    if (c->index >= r->n_warm) {
        if (ok) {
            size_t k = r->s.count++;
            r->s.latency_ns[k] = done - c->due_ns;
            r->s.service_ns[k] = done - c->sent_ns;
            r->s.lag_ns[k] = c->sent_ns - c->due_ns;
            r->errors += c->status >= 400;
            r->last_done_ns = done;
        } else {
            r->errors++;
        }
    }
    /* an answer before the whole request went out leaves the stream unusable */
    int reopen = !ok || c->close_after || c->written < r->request_len;
    conn_clear(c);
    r->inflight--;
    r->free_stack[r->free_count++] = slot;
    if (reopen) reconnect(r, slot);
}

/* Writes what is left of the request; waits for EPOLLOUT when the socket buffer is full. */
static void write_request(struct run *r, int slot) {
    struct conn *c = &r->conns[slot];
    while (c->written < r->request_len) {
        ssize_t n = send(c->fd, r->request + c->written, r->request_len - c->written,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->written += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            watch(r, slot, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
            return;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            finish(r, slot, 0);
            return;
        }
    }
}

static void send_request(struct run *r, int slot, int64_t index, int64_t due_ns) {
    struct conn *c = &r->conns[slot];
    c->index = index;
    c->due_ns = due_ns;
    c->sent_ns = now_ns();
    r->inflight++;
    write_request(r, slot);
}

/* Parses a complete response head (`len` bytes up to and including the blank line): status,
 * Content-Length, Connection: close. 0 when the framing is one this client understands. */
static int parse_head(struct conn *c, size_t len) {
    const char *h = c->head;
    if (len < 12 || strncmp(h, "HTTP/1.", 7) != 0 || h[8] != ' ') return -1;
    int status = 0;
    for (int k = 9; k < 12; k++) {
        if (h[k] < '0' || h[k] > '9') return -1;
        status = status * 10 + (h[k] - '0');
    }
    c->status = status;
    int64_t length = -1;
    const char *end = h + len;
    for (const char *line = memchr(h, '\n', len); line && line + 1 < end;) {
        line++;
        size_t rest = (size_t)(end - line);
        if (rest > 15 && strncasecmp(line, "content-length:", 15) == 0) {
            char *stop;
            length = strtoll(line + 15, &stop, 10);
            if (stop == line + 15 || length < 0) return -1;
        } else if (rest > 11 && strncasecmp(line, "connection:", 11) == 0) {
            const char *v = line + 11;
            while (*v == ' ' || *v == '\t') v++;
            if ((size_t)(end - v) >= 5 && strncasecmp(v, "close", 5) == 0) c->close_after = 1;
        } else if (rest > 18 && strncasecmp(line, "transfer-encoding:", 18) == 0) {
            return -1;  /* chunked bodies: not needed by the scenario's servers */
        }
        line = memchr(line, '\n', rest);
    }
    if (length < 0) {
        if (status == 204 || status == 304 || (status >= 100 && status < 200)) length = 0;
        else return -1;  /* a body delimited by the connection's end: unsupported */
    }
    c->body_left = length;
    return 0;
}

static const char *find_blank_line(const char *buf, size_t len, size_t from) {
    for (size_t k = from; k + 4 <= len; k++)
        if (buf[k] == '\r' && memcmp(buf + k, "\r\n\r\n", 4) == 0) return buf + k;
    return NULL;
}

/* Reads what the socket has; completes the in-flight request once its whole response is in.
 * Bytes on a free connection (none expected) and an idle close just replace the socket. */
static void on_readable(struct run *r, int slot) {
    struct conn *c = &r->conns[slot];
    char scratch[65536];
    for (;;) {
        if (c->index < 0) {
            ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            if (n < 0 && errno == EINTR) continue;
            reconnect(r, slot);  /* idle close, error, or unsolicited bytes */
            return;
        }
        ssize_t n;
        if (!c->in_body) {
            n = recv(c->fd, c->head + c->head_len, HEAD_CAP - c->head_len, 0);
        } else {
            size_t want = c->body_left < (int64_t)sizeof scratch ? (size_t)c->body_left
                                                                  : sizeof scratch;
            n = recv(c->fd, scratch, want, 0);
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            finish(r, slot, 0);  /* reset or closed mid-response */
            return;
        }
        if (!c->in_body) {
            size_t from = c->head_len >= 3 ? c->head_len - 3 : 0;
            c->head_len += (size_t)n;
            const char *blank = find_blank_line(c->head, c->head_len, from);
            if (blank == NULL) {
                if (c->head_len == HEAD_CAP) {
                    finish(r, slot, 0);
                    return;
                }
                continue;
            }
            size_t head_len = (size_t)(blank - c->head) + 4;
            if (parse_head(c, head_len) != 0) {
                finish(r, slot, 0);
                return;
            }
            c->in_body = 1;
            c->body_left -= (int64_t)(c->head_len - head_len);
            if (c->body_left < 0) {  /* bytes past the response: nothing was asked for them */
                finish(r, slot, 0);
                return;
            }
        } else {
            c->body_left -= n;
        }
        if (c->body_left == 0) {
            finish(r, slot, 1);
            return;
        }
    }
}

static void arm_timer(int timer_fd, int64_t at_ns) {
    struct itimerspec it;
    memset(&it, 0, sizeof it);
    it.it_value.tv_sec = at_ns / 1000000000LL;
    it.it_value.tv_nsec = at_ns % 1000000000LL;
    if (it.it_value.tv_sec == 0 && it.it_value.tv_nsec == 0) it.it_value.tv_nsec = 1;
    if (timerfd_settime(timer_fd, TFD_TIMER_ABSTIME, &it, NULL) != 0)
        die("timerfd_settime: %s", strerror(errno));
}

static int64_t count_measured(int64_t from, int64_t to, int64_t n_warm) {
    if (from < n_warm) from = n_warm;
    return to > from ? to - from : 0;
}

/* Measured requests never sent are `dropped`; the JSON goes to stdout. */
static void report(const struct run *r, int64_t t0, double period_ns, int64_t dropped) {
    size_t n = r->s.count;
    double *lat = sorted_us(r->s.latency_ns, n);
    double *svc = sorted_us(r->s.service_ns, n);
    double *lag = sorted_us(r->s.lag_ns, n);
    double span_s = ((double)r->last_done_ns - ((double)t0 + (double)r->n_warm * period_ns)) / 1e9;
    double mean = NAN, max = NAN;
    if (n) {
        double sum = 0;
        for (size_t k = 0; k < n; k++) sum += lat[k];
        mean = sum / (double)n;
        max = lat[n - 1];
    }
#define PCT(v, q) ((v) ? percentile_sorted((v), n, (q)) : NAN)
    double achieved = span_s > 0 ? (double)n / span_s : NAN;
    if (r->opt.json) {
        printf("{\"requests\": %zu, ", n);
        put_number("duration_s", span_s, 0, 0);
        put_number("p50_us", PCT(lat, 50), 0, 0);
        put_number("p90_us", PCT(lat, 90), 0, 0);
        put_number("p99_us", PCT(lat, 99), 0, 0);
        put_number("p999_us", PCT(lat, 99.9), 0, 0);
        put_number("mean_us", mean, 0, 0);
        put_number("max_us", max, 0, 0);
        printf("\"errors\": %lld, ", (long long)r->errors);
        put_number("offered_per_s", r->opt.rate_per_s, 0, 0);
        printf("\"dropped\": %lld, ", (long long)dropped);
        put_number("achieved_per_s", achieved, 0, 0);
        put_number("from_send_p50_us", PCT(svc, 50), 1, 0);
        put_number("from_send_p99_us", PCT(svc, 99), 1, 0);
        put_number("send_lag_p50_us", PCT(lag, 50), 1, 0);
        put_number("send_lag_p99_us", PCT(lag, 99), 1, 1);
        puts("}");
    } else {
        printf("offered %.1f/s, achieved %.1f/s, %zu measured, %lld errors, %lld dropped\n"
               "latency from due (us): p50 %.1f p90 %.1f p99 %.1f p99.9 %.1f max %.1f\n"
               "from send (us): p50 %.1f p99 %.1f; send lag (us): p50 %.1f p99 %.1f\n",
               r->opt.rate_per_s, achieved, n, (long long)r->errors, (long long)dropped,
               PCT(lat, 50), PCT(lat, 90), PCT(lat, 99), PCT(lat, 99.9), max, PCT(svc, 50),
               PCT(svc, 99), PCT(lag, 50), PCT(lag, 99));
    }
#undef PCT
    free(lat);
    free(svc);
    free(lag);
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--selftest-percentiles") == 0) return selftest_percentiles();
    struct run r;
    memset(&r, 0, sizeof r);
    r.opt = parse_options(argc, argv);
    r.request = read_file(r.opt.request_path, &r.request_len);
    signal(SIGPIPE, SIG_IGN);

    double period_ns = 1e9 / r.opt.rate_per_s;
    double total = r.opt.rate_per_s * (r.opt.warmup_s + r.opt.duration_s);
    int64_t n_total = total < 1 ? 1 : (int64_t)total;
    r.n_warm = (int64_t)(r.opt.rate_per_s * r.opt.warmup_s);
    size_t cap = (size_t)(n_total > r.n_warm ? n_total - r.n_warm : 1);
    r.s.latency_ns = malloc(cap * sizeof(int64_t));
    r.s.service_ns = malloc(cap * sizeof(int64_t));
    r.s.lag_ns = malloc(cap * sizeof(int64_t));
    int n_conns = r.opt.connections;
    r.conns = calloc((size_t)n_conns, sizeof *r.conns);
    r.free_stack = malloc((size_t)n_conns * sizeof(int));
    struct epoll_event *events = malloc(((size_t)n_conns + 1) * sizeof *events);
    if (!r.s.latency_ns || !r.s.service_ns || !r.s.lag_ns || !r.conns || !r.free_stack ||
        !events)
        die("out of memory for %lld requests", (long long)n_total);

    r.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    int timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (r.epoll_fd < 0 || timer_fd < 0) die("epoll/timerfd: %s", strerror(errno));
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TIMER_TAG};
    if (epoll_ctl(r.epoll_fd, EPOLL_CTL_ADD, timer_fd, &tev) != 0)
        die("epoll_ctl: %s", strerror(errno));
    for (int k = 0; k < n_conns; k++) {
        conn_clear(&r.conns[k]);
        r.conns[k].fd = open_conn(r.opt.port);
        if (r.conns[k].fd < 0)
            die("connect to 127.0.0.1:%d: %s", r.opt.port, strerror(errno));
        watch(&r, k, EPOLLIN, EPOLL_CTL_ADD);
        r.free_stack[r.free_count++] = n_conns - 1 - k;  /* slot 0 on top */
    }
    r.live = n_conns;

    int64_t t0 = now_ns() + START_DELAY_NS;
    int64_t hard_end = t0 + (int64_t)((r.opt.warmup_s + r.opt.duration_s + r.opt.drain_s) * 1e9);
    int64_t final_end = hard_end + (int64_t)(r.opt.drain_s * 1e9);
    int64_t next = 0, dropped = 0, armed = -1;
    for (;;) {
        int64_t now = now_ns();
        if (next < n_total && (now > hard_end || r.live == 0)) {
            dropped += count_measured(next, n_total, r.n_warm);
            next = n_total;
        }
        while (next < n_total && r.free_count > 0) {
            int64_t due = t0 + (int64_t)((double)next * period_ns);
            if (due > now) break;
            int slot = r.free_stack[--r.free_count];
            send_request(&r, slot, next++, due);
        }
        if (next >= n_total && r.inflight == 0) break;
        if (now > final_end) {
            for (int k = 0; k < n_conns; k++)  /* responses that never came */
                if (r.conns[k].index >= r.n_warm) r.errors++;
            break;
        }
        int64_t wake = final_end;
        if (next < n_total)
            wake = r.free_count > 0 ? t0 + (int64_t)((double)next * period_ns) : hard_end;
        if (wake != armed) {
            arm_timer(timer_fd, wake);
            armed = wake;
        }
        int n = epoll_wait(r.epoll_fd, events, n_conns + 1, -1);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            uint64_t tag = events[k].data.u64;
            if (tag == TIMER_TAG) {
                uint64_t ticks;
                if (read(timer_fd, &ticks, sizeof ticks) < 0 && errno != EAGAIN)
                    die("timerfd read: %s", strerror(errno));
                armed = -1;
                continue;
            }
            int slot = (int)tag;
            struct conn *c = &r.conns[slot];
            if (c->fd < 0) continue;
            if ((events[k].events & EPOLLOUT) && c->index >= 0 && c->written < r.request_len) {
                write_request(&r, slot);
                if (c->index >= 0 && c->written == r.request_len)
                    watch(&r, slot, EPOLLIN, EPOLL_CTL_MOD);
            }
            if (events[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(&r, slot);
        }
    }
    report(&r, t0, period_ns, dropped);
    for (int k = 0; k < n_conns; k++)
        if (r.conns[k].fd >= 0) close(r.conns[k].fd);
    close(timer_fd);
    close(r.epoll_fd);
    free(events);
    free(r.free_stack);
    free(r.conns);
    free(r.s.latency_ns);
    free(r.s.service_ns);
    free(r.s.lag_ns);
    free((void *)r.request);
    return 0;
}
