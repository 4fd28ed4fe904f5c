/*
 * metroplex_bench.cc - the google-benchmark suite of metroplex-c (C++17
 * harness over the public C API only).
 *
 * What is measured (every id is drawn uniformly at random from pools of
 * pre-generated Primus-like ids such as "1479200822465$12345"; the
 * registries are registered, so their writer threads commit to Redis while
 * we measure):
 *
 *   Memory           process memory per local spark: a fresh process (this
 *                    executable, re-run with --mpx-memory-child) connects N
 *                    sparks and flushes; peak RSS (VmHWM, reset first) minus
 *                    RSS before the registry was created, and the RSS left
 *                    after the flush; with and without options.size_hint.
 *   ConnectFill      N sparks connected into a fresh registry by 1 or 2
 *                    threads, with and without options.size_hint: per-call
 *                    p50 / p99 / p99.9 / max of mpx_connect() while the
 *                    tables grow (the worst call), then mpx_flush().
 *   Commit           end-to-end: connect N sparks + mpx_flush(), sparks/s.
 *   ConnectDisconnect  steady churn on a registry that holds n sparks, from
 *                    1 to T threads: per-call connect and disconnect
 *                    latency (each thread keeps 1024 sparks connected).
 *   LookupOwn        mpx_spark() of this server's own sparks (memory only),
 *                    1..T threads, without and with a background churn
 *                    thread (~100k changes/s) keeping the writer busy.
 *   LookupUnknown    mpx_spark() of an id nobody holds: one HGET -> nil.
 *   LookupRemote     mpx_spark() of another server's spark, no remote
 *                    cache: one HGET.
 *   LookupRemoteCached  the same through a registry with remote_ttl_ms,
 *                    warmed with mpx_sparks() (hit_ratio from mpx_stats).
 *   SparksBatch      mpx_sparks() of B other-server ids: one HMGET.
 *   SparksAsync      mpx_sparks_async(), 64 requests in flight; latency is
 *                    from the call to the callback (includes queueing).
 * Lookups run at n = 10,000 and n = 1,000,000 local sparks (a "world": one
 * registry holding n sparks, another server holding n more).
 *
 * Per-call latency: each call is timed on its own with the TSC (lfence;
 * rdtsc ... rdtscp; lfence), calibrated against CLOCK_MONOTONIC; the
 * counters p50_ns / p99_ns / p999_ns / max_ns are over the calls of the run
 * (the last 2^20 calls per thread at most). The timer's own cost is printed
 * in the context ("timer_overhead_ns") and is included in the figures.
 * Every benchmark is repeated (3 times; 1 in smoke mode) and the summary at
 * the end quotes the median of the repetitions ("max_worst" is the worst
 * repetition's max).
 *
 * Redis: $MPX_BENCH_REDIS_URL if set (redis://, unix:// or a Redis Cluster
 * seed list redis-cluster://h:p,h:p), else a private redis-server started
 * with tools/redis_proc.c on a free loopback port and stopped at exit.
 * Every registry uses its own namespace ("mpxbench-PID-SEQ-TAG"), whose
 * keys are UNLINKed when it is done (on every master of a cluster).
 *
 * Key layout: $MPX_BENCH_LAYOUT = node | sharded | auto (default auto: the
 * library's choice, node on a single Redis and sharded on a cluster) and
 * $MPX_BENCH_SHARDS (sharded: 1..16384, default the library's 64) go to
 * the options of every registry; the context line "mpx_layout" says which
 * ran. The Commit benchmark's check counts the fields of every spark hash
 * of the namespace (one in the node layout, one per shard when sharded).
 *
 * Smoke mode (a few seconds; what tools/test.sh runs): MPX_BENCH_SMOKE=1,
 * or --benchmark_min_time below 0.1 s. The 1,000,000-spark datasets become
 * 20,000 and each benchmark runs once.
 * Environment: MPX_BENCH_SPARKS (the large N, 1000..10000000),
 * MPX_BENCH_REPS (repetitions, 1..20), MPX_BENCH_THREADS (max threads).
 * Exit status: 0, or 1 if any benchmark reported an error.
 */
#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>

#include <malloc.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <ostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define MPXB_TSC 1
#endif

#include "metroplex.h"
#include "redis_proc.h"

namespace {

// ---------------------------------------------------------------------------
// Configuration

struct Config {
    bool smoke = false;
    size_t big = 1000000;  // the "1M" datasets
    size_t small = 10000;  // the "10k" datasets
    int reps = 3;
    int max_threads = 2;
    std::string url;
    bool own_redis = false;
    int layout = MPX_LAYOUT_AUTO; // $MPX_BENCH_LAYOUT
    uint32_t shards = 0;          // $MPX_BENCH_SHARDS; 0: the library's default
};
Config g;
redis_proc_t g_redis;

constexpr int kMaxThreads = 16;
constexpr size_t kLoopSamples = size_t(1) << 20;  // per thread, ring
constexpr uint32_t kFlushTimeoutMs = 300000;
constexpr const char *kSelfAddr = "http://127.0.0.1:7001";
constexpr const char *kPeerAddr = "http://127.0.0.1:7002";
constexpr const char *kFillAddr = "http://127.0.0.1:7003";

std::atomic<uint64_t> g_bg_errors{0};

void on_error_cb(mpx_t *, int err, const char *msg, void *)
{
    uint64_t n = g_bg_errors.fetch_add(1, std::memory_order_relaxed);
    if (n < 5)
        fprintf(stderr, "metroplex-bench: background error %s: %s\n", mpx_err_name(err), msg);
}

// ---------------------------------------------------------------------------
// Clock: TSC ticks, calibrated

double g_ns_per_tick = 1.0;
double g_timer_overhead_ns = 0.0;

inline uint64_t t_begin()
{
    std::atomic_signal_fence(std::memory_order_seq_cst); // no compiler reordering
#ifdef MPXB_TSC
    _mm_lfence();
    return __rdtsc();
#else
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
#endif
}

inline uint64_t t_end()
{
#ifdef MPXB_TSC
    unsigned aux;
    uint64_t t = __rdtscp(&aux);
    _mm_lfence();
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return t;
#else
    return t_begin();
#endif
}

double now_s()
{
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

void calibrate_clock(double seconds)
{
#ifdef MPXB_TSC
    double s0 = now_s();
    uint64_t k0 = t_begin();
    double s1 = s0;
    while (s1 - s0 < seconds) // bounded: ends after `seconds`
        s1 = now_s();
    uint64_t k1 = t_end();
    g_ns_per_tick = (s1 - s0) * 1e9 / double(k1 - k0);
#endif
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 10000; i++) {
        uint64_t a = t_begin();
        uint64_t b = t_end();
        best = std::min(best, b - a);
    }
    g_timer_overhead_ns = double(best) * g_ns_per_tick;
}

// ---------------------------------------------------------------------------
// Latency samples and percentiles

struct Samples {
    std::vector<uint32_t> buf;
    size_t mask = 0;
    uint64_t n = 0;
    void reset(size_t cap_pow2)
    {
        if (buf.size() != cap_pow2)
            buf.assign(cap_pow2, 0); // allocated and touched here, not while timing
        mask = cap_pow2 - 1;
        n = 0;
    }
    void add(uint64_t ticks)
    {
        buf[n & mask] = ticks > UINT32_MAX ? UINT32_MAX : uint32_t(ticks);
        n++;
    }
    size_t size() const { return n < buf.size() ? size_t(n) : buf.size(); }
};

size_t pow2_at_least(size_t n)
{
    size_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

struct Pct {
    double p50 = 0, p99 = 0, p999 = 0, max = 0;
    uint64_t n = 0;
};

Pct percentiles(const std::vector<const Samples *> &in)
{
    std::vector<uint32_t> all;
    size_t total = 0;
    for (const Samples *s : in)
        total += s->size();
    all.reserve(total);
    for (const Samples *s : in)
        all.insert(all.end(), s->buf.begin(), s->buf.begin() + long(s->size()));
    Pct p;
    p.n = all.size();
    if (all.empty())
        return p;
    auto at = [&](double q) {
        size_t k = size_t(q * double(all.size() - 1) + 0.5);
        std::nth_element(all.begin(), all.begin() + long(k), all.end());
        return double(all[k]) * g_ns_per_tick;
    };
    p.p50 = at(0.50);
    p.p99 = at(0.99);
    p.p999 = at(0.999);
    p.max = double(*std::max_element(all.begin(), all.end())) * g_ns_per_tick;
    return p;
}

void put_pct(benchmark::State &st, const std::string &prefix, const Pct &p)
{
    st.counters[prefix + "p50_ns"] = p.p50;
    st.counters[prefix + "p99_ns"] = p.p99;
    st.counters[prefix + "p999_ns"] = p.p999;
    st.counters[prefix + "max_ns"] = p.max;
}

// One pair of sample rings per benchmark thread (google-benchmark threads).
Samples g_samp[kMaxThreads][2];

// ---------------------------------------------------------------------------
// Spark ids: pre-generated, Primus-like "<ms timestamp>$<counter>"

struct Id {
    char s[23];
    uint8_t n;
};
static_assert(sizeof(Id) == 24, "Id is one 24-byte slot");

std::vector<Id> g_own;      // this server's sparks (worlds, fills)
std::vector<uint32_t> g_perm; // random permutation of g_own's indices
std::vector<Id> g_peer;     // another server's sparks
std::vector<Id> g_unknown;  // ids nobody holds
std::vector<Id> g_churn;    // connected and disconnected by churn loops

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
    uint64_t next()
    {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    uint32_t below(size_t n) { return uint32_t(((next() >> 32) * uint64_t(n)) >> 32); }
};

void make_pool(std::vector<Id> &v, size_t n, uint64_t base_ms)
{
    v.resize(n);
    for (size_t i = 0; i < n; i++) {
        int len = snprintf(v[i].s, sizeof v[i].s, "%" PRIu64 "$%zu", base_ms + i / 1024, i);
        v[i].n = uint8_t(len);
    }
}

template <class T> void shuffle(std::vector<T> &v, uint64_t seed)
{
    Rng r(seed);
    for (size_t i = v.size(); i > 1; i--)
        std::swap(v[i - 1], v[r.below(i)]);
}

void make_pools()
{
    // Distinct timestamp ranges: no id occurs in two pools.
    make_pool(g_own, g.big, 1479200822465ull);
    make_pool(g_peer, g.big, 1479210822465ull);
    make_pool(g_unknown, 65536, 1479220822465ull);
    make_pool(g_churn, g.smoke ? 16384 : 262144, 1479230822465ull);
    shuffle(g_churn, 4);
    g_perm.resize(g_own.size());
    for (size_t i = 0; i < g_perm.size(); i++)
        g_perm[i] = uint32_t(i);
    shuffle(g_perm, 1);
}

// ---------------------------------------------------------------------------
// Process memory

long status_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long v = -1;
    size_t fl = strlen(field);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
            v = strtol(line + fl + 1, nullptr, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

// Reset the peak-RSS mark (VmHWM) of this process; false if not possible.
bool reset_hwm()
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f)
        return false;
    bool ok = fputs("5", f) >= 0;
    ok = (fclose(f) == 0) && ok;
    return ok;
}

// ---------------------------------------------------------------------------
// A direct Redis connection, for cleanup and checks

struct Endpoint {
    bool unix_sock = false;
    std::string host = "127.0.0.1", path, user, pass;
    int port = 6379;
    int db = 0;
};

std::string pct_decode(const std::string &s)
{
    std::string o;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '%' && i + 2 < s.size()) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            o += char(strtol(hex, nullptr, 16));
            i += 2;
        } else {
            o += s[i];
        }
    }
    return o;
}

bool parse_url(const std::string &url, Endpoint &ep)
{
    if (url.rfind("redis://", 0) == 0) {
        std::string rest = url.substr(8);
        size_t at = rest.rfind('@');
        if (at != std::string::npos) {
            std::string ui = rest.substr(0, at);
            rest = rest.substr(at + 1);
            size_t c = ui.find(':');
            if (c == std::string::npos) {
                ep.user = pct_decode(ui);
            } else {
                ep.user = pct_decode(ui.substr(0, c));
                ep.pass = pct_decode(ui.substr(c + 1));
            }
        }
        size_t slash = rest.find('/');
        std::string hp = rest.substr(0, slash);
        if (slash != std::string::npos && slash + 1 < rest.size())
            ep.db = atoi(rest.c_str() + slash + 1);
        if (!hp.empty() && hp[0] == '[') {
            size_t e = hp.find(']');
            if (e == std::string::npos)
                return false;
            ep.host = hp.substr(1, e - 1);
            if (e + 1 < hp.size() && hp[e + 1] == ':')
                ep.port = atoi(hp.c_str() + e + 2);
        } else {
            size_t c = hp.rfind(':');
            ep.host = hp.substr(0, c);
            if (c != std::string::npos)
                ep.port = atoi(hp.c_str() + c + 1);
        }
        if (ep.host.empty())
            ep.host = "127.0.0.1";
        return ep.port > 0;
    }
    if (url.rfind("unix://", 0) == 0) {
        ep.unix_sock = true;
        std::string rest = url.substr(7);
        size_t q = rest.find('?');
        ep.path = pct_decode(rest.substr(0, q));
        std::string query = q == std::string::npos ? "" : rest.substr(q + 1);
        size_t pos = 0;
        while (pos < query.size()) {
            size_t amp = query.find('&', pos);
            std::string kv = query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
            size_t eq = kv.find('=');
            std::string k = kv.substr(0, eq), v = eq == std::string::npos ? "" : pct_decode(kv.substr(eq + 1));
            if (k == "db")
                ep.db = atoi(v.c_str());
            else if (k == "user")
                ep.user = v;
            else if (k == "password")
                ep.pass = v;
            if (amp == std::string::npos)
                break;
            pos = amp + 1;
        }
        return !ep.path.empty();
    }
    return false;
}

redisContext *connect_to(const Endpoint &ep)
{
    timeval tv = {5, 0};
    redisContext *c = ep.unix_sock ? redisConnectUnixWithTimeout(ep.path.c_str(), tv)
                                   : redisConnectWithTimeout(ep.host.c_str(), ep.port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return nullptr;
    }
    timeval ct = {60, 0};
    redisSetTimeout(c, ct);
    redisReply *r = nullptr;
    if (!ep.pass.empty())
        r = ep.user.empty()
                ? static_cast<redisReply *>(redisCommand(c, "AUTH %s", ep.pass.c_str()))
                : static_cast<redisReply *>(
                      redisCommand(c, "AUTH %s %s", ep.user.c_str(), ep.pass.c_str()));
    if (r)
        freeReplyObject(r);
    if (ep.db) {
        r = static_cast<redisReply *>(redisCommand(c, "SELECT %d", ep.db));
        if (r)
            freeReplyObject(r);
    }
    return c;
}

bool is_cluster_url(const std::string &url) { return url.rfind("redis-cluster://", 0) == 0; }

// The seeds of a redis-cluster://[user:pass@]h:p,h:p URL (credentials on each).
std::vector<Endpoint> cluster_seeds(const std::string &url)
{
    std::vector<Endpoint> out;
    std::string rest = url.substr(16);
    size_t q = rest.find_first_of("/?");
    if (q != std::string::npos)
        rest = rest.substr(0, q);
    Endpoint cred;
    size_t at = rest.rfind('@');
    if (at != std::string::npos) {
        std::string ui = rest.substr(0, at);
        rest = rest.substr(at + 1);
        size_t c = ui.find(':');
        cred.user = pct_decode(c == std::string::npos ? ui : ui.substr(0, c));
        if (c != std::string::npos)
            cred.pass = pct_decode(ui.substr(c + 1));
    }
    size_t pos = 0;
    while (pos <= rest.size()) {
        size_t comma = rest.find(',', pos);
        std::string hp = rest.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        size_t c = hp.rfind(':');
        Endpoint ep = cred;
        ep.host = hp.substr(0, c);
        ep.port = c == std::string::npos ? 6379 : atoi(hp.c_str() + c + 1);
        if (!ep.host.empty())
            out.push_back(ep);
        if (comma == std::string::npos)
            break;
        pos = comma + 1;
    }
    return out;
}

// Direct connections to every master (a single Redis: one), for cleanup and
// checks. On a cluster the masters come from CLUSTER NODES of the first seed
// that answers.
struct Masters {
    std::vector<redisContext *> c;
    bool cluster = false;
    Masters()
    {
        if (!is_cluster_url(g.url)) {
            Endpoint ep;
            redisContext *x = parse_url(g.url, ep) ? connect_to(ep) : nullptr;
            if (x)
                c.push_back(x);
            return;
        }
        cluster = true;
        for (const Endpoint &seed : cluster_seeds(g.url)) {
            redisContext *x = connect_to(seed);
            if (!x)
                continue;
            redisReply *r = static_cast<redisReply *>(redisCommand(x, "CLUSTER NODES"));
            redisFree(x);
            if (!r || r->type != REDIS_REPLY_STRING) {
                if (r)
                    freeReplyObject(r);
                continue;
            }
            // <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <state> <slots...>
            std::string text(r->str, r->len);
            freeReplyObject(r);
            size_t pos = 0;
            while (pos < text.size()) {
                size_t nl = text.find('\n', pos);
                std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
                pos = nl == std::string::npos ? text.size() : nl + 1;
                std::vector<std::string> f;
                size_t p = 0;
                while (p < line.size()) {
                    size_t sp = line.find(' ', p);
                    f.push_back(line.substr(p, sp == std::string::npos ? std::string::npos : sp - p));
                    p = sp == std::string::npos ? line.size() : sp + 1;
                }
                if (f.size() < 9 || f[2].find("master") == std::string::npos ||
                    f[2].find("fail") != std::string::npos)
                    continue; // no slots, a replica or a failed node
                std::string hp = f[1].substr(0, f[1].find('@'));
                size_t c2 = hp.rfind(':');
                Endpoint ep = seed;
                ep.host = hp.substr(0, c2);
                ep.port = atoi(hp.c_str() + c2 + 1);
                if (ep.host.empty())
                    ep.host = seed.host;
                if (redisContext *m = connect_to(ep))
                    c.push_back(m);
            }
            break;
        }
    }
    ~Masters()
    {
        for (redisContext *x : c)
            redisFree(x);
    }
    Masters(const Masters &) = delete;
    Masters &operator=(const Masters &) = delete;
};

// The layout the registries run (the library's choice when auto).
bool sharded_layout()
{
    return g.layout == MPX_LAYOUT_SHARDED || (g.layout == MPX_LAYOUT_AUTO && is_cluster_url(g.url));
}

// Every key matching `pattern` on master x, by SCAN (bounded).
std::vector<std::string> scan_keys(redisContext *x, const std::string &pattern)
{
    std::vector<std::string> keys;
    std::string cursor = "0";
    for (int round = 0; round < 1000000; round++) {
        redisReply *r = static_cast<redisReply *>(redisCommand(
            x, "SCAN %s MATCH %s COUNT 1000", cursor.c_str(), pattern.c_str()));
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            if (r)
                freeReplyObject(r);
            break;
        }
        cursor.assign(r->element[0]->str, r->element[0]->len);
        for (size_t i = 0; i < r->element[1]->elements; i++)
            keys.emplace_back(r->element[1]->element[i]->str, r->element[1]->element[i]->len);
        freeReplyObject(r);
        if (cursor == "0")
            break;
    }
    return keys;
}

// Sparks in Redis: HLEN of the namespace's spark hash, or in the sharded
// layout the sum over its shard hashes ("NS:{tag}:sparks") on every master.
long long redis_hlen(const std::string &ns)
{
    Masters ms;
    if (ms.c.empty())
        return -1;
    if (!sharded_layout()) {
        redisReply *r = static_cast<redisReply *>(
            redisCommand(ms.c[0], "HLEN %s", (ns + ":sparks").c_str()));
        long long v = (r && r->type == REDIS_REPLY_INTEGER) ? r->integer : -1;
        if (r)
            freeReplyObject(r);
        return v;
    }
    long long sum = 0;
    for (redisContext *x : ms.c)
        for (const std::string &k : scan_keys(x, ns + ":{*}:sparks")) {
            redisReply *r = static_cast<redisReply *>(redisCommand(x, "HLEN %b", k.data(), k.size()));
            if (!r || r->type != REDIS_REPLY_INTEGER) {
                if (r)
                    freeReplyObject(r);
                return -1;
            }
            sum += r->integer;
            freeReplyObject(r);
        }
    return sum;
}

// UNLINK every key of a namespace ("NS:*", and "{NS}:*", the sharded
// layout's control keys) on every master (bounded SCAN).
void redis_unlink_ns(const std::string &ns)
{
    Masters ms;
    if (ms.c.empty()) {
        fprintf(stderr, "metroplex-bench: cannot connect to Redis to clean %s\n", ns.c_str());
        return;
    }
    for (redisContext *x : ms.c) {
        for (const std::string &pattern : {ns + ":*", "{" + ns + "}:*"}) {
            std::vector<std::string> keys = scan_keys(x, pattern);
            // One Redis: UNLINK them in batches. A cluster refuses keys of
            // several slots in one command: one UNLINK per key, pipelined.
            for (size_t i = 0; i < keys.size();) {
                size_t n = ms.cluster ? 1 : std::min<size_t>(1000, keys.size() - i);
                std::vector<const char *> argv{"UNLINK"};
                std::vector<size_t> lens{6};
                for (size_t k = i; k < i + n; k++) {
                    argv.push_back(keys[k].data());
                    lens.push_back(keys[k].size());
                }
                redisAppendCommandArgv(x, int(argv.size()), argv.data(), lens.data());
                i += n;
            }
            for (size_t i = 0; i < keys.size(); i += ms.cluster ? 1 : 1000) {
                void *r = nullptr;
                if (redisGetReply(x, &r) != REDIS_OK)
                    break;
                freeReplyObject(r);
            }
        }
    }
    // UNLINK frees big keys on Redis's lazyfree thread: wait for it (at most
    // 60 s), so that freeing a million sparks does not steal CPU from the
    // next measurement.
    const double deadline = now_s() + 60;
    for (redisContext *x : ms.c) {
        while (now_s() < deadline) {
            redisReply *r = static_cast<redisReply *>(redisCommand(x, "INFO memory"));
            long long pending = 0;
            if (r && r->type == REDIS_REPLY_STRING) {
                const char *p = strstr(r->str, "lazyfree_pending_objects:");
                if (p)
                    pending = atoll(p + strlen("lazyfree_pending_objects:"));
            }
            if (r)
                freeReplyObject(r);
            if (!r || pending == 0)
                break;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
}

// ---------------------------------------------------------------------------
// Registries

std::atomic<unsigned> g_ns_seq{0};

std::string fresh_ns(const char *tag)
{
    char b[96];
    snprintf(b, sizeof b, "mpxbench-%d-%u-%s", int(getpid()), g_ns_seq.fetch_add(1) + 1, tag);
    return b;
}

struct RegOpts {
    size_t hint = 0;
    uint32_t remote_ttl_ms = 0;
    size_t remote_max = 0;
    const char *address = nullptr;
};

std::string api_error(const char *what, int rc)
{
    return std::string(what) + ": " + mpx_err_name(rc) + ": " + mpx_last_error();
}

mpx_t *open_registry(const std::string &ns, const RegOpts &ro, std::string &err)
{
    mpx_options_t o;
    mpx_options_init(&o);
    o.redis_url = g.url.c_str();
    o.ns = ns.c_str();
    o.size_hint = ro.hint;
    o.layout = g.layout;
    if (g.shards)
        o.shards = g.shards;
    o.remote_ttl_ms = ro.remote_ttl_ms;
    if (ro.remote_max)
        o.remote_max = ro.remote_max;
    o.on_error = on_error_cb;
    mpx_t *m = nullptr;
    int rc = mpx_create(&o, &m);
    if (rc) {
        err = api_error("mpx_create", rc);
        return nullptr;
    }
    if (ro.address && (rc = mpx_register(m, ro.address)) != 0) {
        err = api_error("mpx_register", rc);
        mpx_destroy(m);
        return nullptr;
    }
    return m;
}

void close_registry(mpx_t *&m)
{
    if (m)
        mpx_destroy(m);
    m = nullptr;
}

// Connect ids[idx(k)] for k in [0, n) into m; returns the first error or 0.
template <class F> int connect_range(mpx_t *m, const std::vector<Id> &ids, size_t n, F idx)
{
    int first = 0;
    for (size_t k = 0; k < n; k++) {
        const Id &id = ids[idx(k)];
        int rc = mpx_connect(m, id.s, id.n);
        if (rc && !first)
            first = rc;
    }
    return first;
}

// ---------------------------------------------------------------------------
// A world: `self` holds n own sparks, `peer` (another server) n more;
// `reader` is an unregistered registry with a remote cache.

struct World {
    size_t n = 0;
    std::string ns, error;
    mpx_t *self = nullptr, *peer = nullptr, *reader = nullptr;
    bool reader_warm = false;
};
std::unique_ptr<World> g_world;

void world_release()
{
    if (!g_world)
        return;
    close_registry(g_world->reader);
    close_registry(g_world->peer);
    close_registry(g_world->self);
    redis_unlink_ns(g_world->ns);
    g_world.reset();
    malloc_trim(0);
}

World *world_get(size_t n)
{
    if (g_world && g_world->n == n)
        return g_world.get();
    world_release();
    auto w = std::make_unique<World>();
    w->n = n;
    w->ns = fresh_ns("world");
    double t0 = now_s();
    std::string err;
    RegOpts so;
    so.hint = n;
    so.address = kSelfAddr;
    RegOpts po = so;
    po.address = kPeerAddr;
    RegOpts ro;
    ro.remote_ttl_ms = 600000;
    ro.remote_max = std::max<size_t>(2 * n, 1000000);
    if (!(w->self = open_registry(w->ns, so, err)) || !(w->peer = open_registry(w->ns, po, err)) ||
        !(w->reader = open_registry(w->ns, ro, err))) {
        w->error = "world: " + err;
    } else {
        int rc_self = 0;
        std::thread th([&] { rc_self = connect_range(w->self, g_own, n, [](size_t k) { return k; }); });
        int rc_peer = connect_range(w->peer, g_peer, n, [](size_t k) { return k; });
        th.join();
        int rc;
        if (rc_self || rc_peer)
            w->error = api_error("world: mpx_connect", rc_self ? rc_self : rc_peer);
        else if ((rc = mpx_flush(w->self, kFlushTimeoutMs)) != 0 ||
                 (rc = mpx_flush(w->peer, kFlushTimeoutMs)) != 0)
            w->error = api_error("world: mpx_flush", rc);
    }
    if (w->error.empty())
        fprintf(stderr, "metroplex-bench: world of %zu + %zu sparks ready in %.1f s (namespace %s)\n",
                n, n, now_s() - t0, w->ns.c_str());
    else
        fprintf(stderr, "metroplex-bench: %s\n", w->error.c_str());
    g_world = std::move(w);
    return g_world.get();
}

void setup_world(const benchmark::State &st) { world_get(size_t(st.range(0))); }
void setup_no_world(const benchmark::State &) { world_release(); }

World *world_or_skip(benchmark::State &st)
{
    World *w = g_world.get();
    if (!w || w->n != size_t(st.range(0))) {
        st.SkipWithError("world not set up");
        return nullptr;
    }
    if (!w->error.empty()) {
        st.SkipWithError(w->error.c_str());
        return nullptr;
    }
    return w;
}

void put_errors(benchmark::State &st, uint64_t errors)
{
    if (errors)
        st.counters["errors"] = double(errors);
}

// ---------------------------------------------------------------------------
// A background churn thread: connect/disconnect at a bounded rate.

class Churner {
  public:
    // Uses g_churn[from, to); keeps `window` sparks connected; bursts of
    // `burst` changes then a pause of `pause_us`.
    void start(mpx_t *m, size_t from, size_t to, size_t burst, unsigned pause_us)
    {
        stop_.store(false);
        changes_.store(0);
        th_ = std::thread([=] { run(m, from, to, burst, pause_us); });
    }
    // Returns the changes per second achieved.
    double stop()
    {
        stop_.store(true);
        if (th_.joinable())
            th_.join();
        return seconds_ > 0 ? double(changes_.load()) / seconds_ : 0.0;
    }
    uint64_t errors() const { return errors_; }

  private:
    void run(mpx_t *m, size_t from, size_t to, size_t burst, unsigned pause_us)
    {
        const size_t len = to - from, window = std::min<size_t>(1024, len / 4);
        const Id *ids = g_churn.data() + from;
        for (size_t i = 0; i < window; i++)
            errors_ += mpx_connect(m, ids[i].s, ids[i].n) != 0;
        double t0 = now_s();
        size_t j = 0;
        while (!stop_.load(std::memory_order_relaxed)) {
            for (size_t b = 0; b < burst; b += 2, j++) {
                const Id &a = ids[(j + window) % len], &d = ids[j % len];
                errors_ += mpx_connect(m, a.s, a.n) != 0;
                errors_ += mpx_disconnect(m, d.s, d.n) != 0;
            }
            changes_.fetch_add(burst, std::memory_order_relaxed);
            std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
        }
        seconds_ = now_s() - t0;
        for (size_t i = 0; i < window; i++) {
            const Id &d = ids[(j + i) % len];
            errors_ += mpx_disconnect(m, d.s, d.n) != 0;
        }
    }
    std::thread th_;
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> changes_{0};
    double seconds_ = 0;
    uint64_t errors_ = 0;
};

// ---------------------------------------------------------------------------
// ConnectFill: N connects into a fresh registry, timed one by one.

void BM_ConnectFill(benchmark::State &st)
{
    const size_t N = std::min(size_t(st.range(0)), g_own.size());
    const int T = int(st.range(1));
    const bool hint = st.range(2) != 0;
    std::vector<Samples> samp(static_cast<size_t>(T));
    for (auto &s : samp)
        s.reset(pow2_at_least(N / size_t(T) + 1));
    for (auto _ : st) {
        const std::string ns = fresh_ns("fill");
        std::string err;
        RegOpts ro;
        ro.hint = hint ? N : 0;
        ro.address = kFillAddr;
        mpx_t *m = open_registry(ns, ro, err);
        if (!m) {
            st.SkipWithError(err.c_str());
            break;
        }
        std::atomic<bool> go{false};
        std::atomic<int> ready{0};
        std::vector<uint64_t> errs(size_t(T), 0);
        std::vector<std::thread> th;
        for (int t = 0; t < T; t++) {
            th.emplace_back([&, t] {
                Samples &s = samp[size_t(t)];
                s.n = 0;
                ready.fetch_add(1);
                while (!go.load(std::memory_order_acquire))
                    std::this_thread::yield(); // bounded: main sets go right away
                uint64_t e = 0;
                for (size_t k = size_t(t); k < N; k += size_t(T)) {
                    const Id id = g_own[g_perm[k]]; // a copy: in cache, as a gateway's
                    uint64_t a = t_begin();
                    int rc = mpx_connect(m, id.s, id.n);
                    uint64_t b = t_end();
                    s.add(b - a);
                    e += rc != 0;
                }
                errs[size_t(t)] = e;
            });
        }
        while (ready.load() < T)
            std::this_thread::yield();
        const double c0 = now_s();
        go.store(true, std::memory_order_release);
        for (auto &x : th)
            x.join();
        const double c1 = now_s();
        const int frc = mpx_flush(m, kFlushTimeoutMs);
        const double f1 = now_s();
        close_registry(m);
        redis_unlink_ns(ns);
        st.SetIterationTime(c1 - c0);

        uint64_t e = 0;
        for (uint64_t x : errs)
            e += x;
        if (frc) {
            err = api_error("mpx_flush", frc);
            st.SkipWithError(err.c_str());
            break;
        }
        std::vector<const Samples *> ps;
        for (auto &s : samp)
            ps.push_back(&s);
        put_pct(st, "connect_", percentiles(ps));
        st.counters["connects_per_s"] = double(N) / (c1 - c0);
        st.counters["commit_sparks_per_s"] = double(N) / (f1 - c0);
        st.counters["flush_s"] = f1 - c1;
        put_errors(st, e);
    }
}

// ---------------------------------------------------------------------------
// Memory: process memory per local spark, measured in a fresh process (this
// executable run with --mpx-memory-child), so that memory freed by earlier
// benchmarks and kept by malloc cannot hide the registry's growth.

constexpr const char *kMemoryChildFlag = "--mpx-memory-child";

// In the child: argv = exe FLAG N HINT URL. Prints one line
// "mpx-memory RSS0_KIB PEAK_KIB SETTLED_KIB CONNECT_S FLUSH_S HWM_OK".
int memory_child(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    const size_t N = size_t(strtoull(argv[2], nullptr, 10));
    const bool hint = atoi(argv[3]) != 0;
    g.url = argv[4];
    g.big = N;
    make_pool(g_own, N, 1479200822465ull);
    g_perm.resize(N);
    for (size_t i = 0; i < N; i++)
        g_perm[i] = uint32_t(i);
    shuffle(g_perm, 1);
    const std::string ns = fresh_ns("memory");
    malloc_trim(0);
    const bool hwm_ok = reset_hwm();
    const long rss0 = status_kib("VmRSS");
    std::string err;
    RegOpts ro;
    ro.hint = hint ? N : 0;
    ro.address = kFillAddr;
    mpx_t *m = open_registry(ns, ro, err);
    if (!m) {
        fprintf(stderr, "metroplex-bench (memory child): %s\n", err.c_str());
        return 1;
    }
    const double c0 = now_s();
    int rc = connect_range(m, g_own, N, [](size_t k) { return g_perm[k]; });
    const double c1 = now_s();
    const long rss_connected = status_kib("VmRSS");
    if (rc == 0)
        rc = mpx_flush(m, kFlushTimeoutMs);
    const double f1 = now_s();
    const long settled = status_kib("VmRSS");
    const long peak = hwm_ok ? status_kib("VmHWM") : std::max(rss_connected, settled);
    if (rc)
        fprintf(stderr, "metroplex-bench (memory child): %s\n", api_error("connect/flush", rc).c_str());
    close_registry(m);
    redis_unlink_ns(ns);
    printf("mpx-memory %ld %ld %ld %.6f %.6f %d\n", rss0, peak, settled, c1 - c0, f1 - c1,
           hwm_ok ? 1 : 0);
    fflush(stdout);
    return rc ? 1 : 0;
}

void BM_Memory(benchmark::State &st)
{
    const size_t N = size_t(st.range(0));
    const int hint = int(st.range(1));
    for (auto _ : st) {
        int fds[2];
        if (pipe(fds) != 0) {
            st.SkipWithError("pipe failed");
            break;
        }
        const std::string n_s = std::to_string(N), h_s = std::to_string(hint);
        pid_t pid = fork();
        if (pid < 0) {
            close(fds[0]);
            close(fds[1]);
            st.SkipWithError("fork failed");
            break;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            dup2(fds[1], 1);
            close(fds[0]);
            close(fds[1]);
            const char *args[] = {"metroplex-bench", kMemoryChildFlag, n_s.c_str(), h_s.c_str(),
                                  g.url.c_str(), nullptr};
            execv("/proc/self/exe", const_cast<char *const *>(args));
            _exit(127);
        }
        close(fds[1]);
        std::string out;
        char buf[512];
        ssize_t k;
        while ((k = read(fds[0], buf, sizeof buf)) > 0) // ends when the child exits
            out.append(buf, size_t(k));
        close(fds[0]);
        int status = 0;
        waitpid(pid, &status, 0);
        long rss0 = 0, peak = 0, settled = 0;
        double cs = 0, fs = 0;
        int hwm_ok = 0;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
            sscanf(out.c_str(), "mpx-memory %ld %ld %ld %lf %lf %d", &rss0, &peak, &settled, &cs,
                   &fs, &hwm_ok) != 6) {
            st.SkipWithError("memory child failed (see stderr)");
            break;
        }
        st.SetIterationTime(cs);
        st.counters["peak_bytes_per_spark"] = double(peak - rss0) * 1024.0 / double(N);
        st.counters["settled_bytes_per_spark"] = double(settled - rss0) * 1024.0 / double(N);
        st.counters["connect_s"] = cs;
        st.counters["flush_s"] = fs;
        if (!hwm_ok)
            st.counters["peak_is_sampled"] = 1;
    }
}

// ---------------------------------------------------------------------------
// Commit: end-to-end, connect N sparks then flush; no per-call timing.

void BM_Commit(benchmark::State &st)
{
    const size_t N = std::min(size_t(st.range(0)), g_own.size());
    const int T = int(st.range(1));
    for (auto _ : st) {
        const std::string ns = fresh_ns("commit");
        std::string err;
        RegOpts ro;
        ro.address = kFillAddr;
        mpx_t *m = open_registry(ns, ro, err);
        if (!m) {
            st.SkipWithError(err.c_str());
            break;
        }
        std::vector<int> rcs(size_t(T), 0);
        const double c0 = now_s();
        std::vector<std::thread> th;
        for (int t = 0; t < T; t++)
            th.emplace_back([&, t] {
                size_t cnt = (N - size_t(t) + size_t(T) - 1) / size_t(T);
                rcs[size_t(t)] = connect_range(m, g_own, cnt, [&](size_t k) {
                    return g_perm[size_t(t) + k * size_t(T)];
                });
            });
        for (auto &x : th)
            x.join();
        const double c1 = now_s();
        const int frc = mpx_flush(m, kFlushTimeoutMs);
        const double f1 = now_s();
        mpx_stats_t s;
        memset(&s, 0, sizeof s);
        mpx_stats(m, &s);
        close_registry(m);
        const long long hlen = redis_hlen(ns);
        redis_unlink_ns(ns);
        st.SetIterationTime(f1 - c0);
        int crc = 0;
        for (int x : rcs)
            crc = crc ? crc : x;
        if (crc || frc) {
            err = api_error(crc ? "mpx_connect" : "mpx_flush", crc ? crc : frc);
            st.SkipWithError(err.c_str());
            break;
        }
        if (hlen != (long long)N) {
            err = "HLEN " + std::to_string(hlen) + " after flush, expected " + std::to_string(N);
            st.SkipWithError(err.c_str());
            break;
        }
        st.counters["sparks_per_s"] = double(N) / (f1 - c0);
        st.counters["connect_s"] = c1 - c0;
        st.counters["flush_s"] = f1 - c1;
        st.counters["batches"] = double(s.batches);
        if (s.commit_latency_count) {
            st.counters["commit_lat_p50_us"] = double(s.commit_latency_p50_us);
            st.counters["commit_lat_p99_us"] = double(s.commit_latency_p99_us);
            st.counters["commit_lat_max_us"] = double(s.commit_latency_max_us);
        }
    }
}

// ---------------------------------------------------------------------------
// ConnectDisconnect: steady churn, 1..T benchmark threads, on a world.

void BM_ConnectDisconnect(benchmark::State &st)
{
    World *w = world_or_skip(st);
    if (!w)
        return;
    const int t = st.thread_index(), T = st.threads();
    if (T > kMaxThreads) {
        st.SkipWithError("too many threads");
        return;
    }
    // The last quarter of g_churn is the background churner's.
    const size_t avail = g_churn.size() * 3 / 4;
    const size_t from = avail * size_t(t) / size_t(T), to = avail * size_t(t + 1) / size_t(T);
    const size_t len = to - from, window = std::min<size_t>(1024, len / 4);
    const Id *ids = g_churn.data() + from;
    uint64_t errs = 0;
    for (size_t i = 0; i < window; i++)
        errs += mpx_connect(w->self, ids[i].s, ids[i].n) != 0;
    Samples &sc = g_samp[t][0], &sd = g_samp[t][1];
    sc.reset(kLoopSamples);
    sd.reset(kLoopSamples);
    size_t j = 0;
    for (auto _ : st) {
        const Id a = ids[(j + window) % len], d = ids[j % len]; // copies: in cache
        j++;
        uint64_t t0 = t_begin();
        int r1 = mpx_connect(w->self, a.s, a.n);
        uint64_t t1 = t_end();
        int r2 = mpx_disconnect(w->self, d.s, d.n);
        uint64_t t2 = t_end();
        sc.add(t1 - t0);
        sd.add(t2 - t1);
        errs += (r1 != 0) + (r2 != 0);
    }
    for (size_t i = 0; i < window; i++) {
        const Id &d = ids[(j + i) % len];
        errs += mpx_disconnect(w->self, d.s, d.n) != 0;
    }
    st.counters["changes_per_s"] = benchmark::Counter(2.0 * double(j), benchmark::Counter::kIsRate);
    put_errors(st, errs);
    if (t == 0) { // the others have left the loop (barrier); merge their samples
        std::vector<const Samples *> c, d;
        for (int i = 0; i < T; i++) {
            c.push_back(&g_samp[i][0]);
            d.push_back(&g_samp[i][1]);
        }
        put_pct(st, "connect_", percentiles(c));
        put_pct(st, "disconnect_", percentiles(d));
        mpx_flush(w->self, kFlushTimeoutMs); // do not leave a backlog to the next run
    }
}

// ---------------------------------------------------------------------------
// LookupOwn: mpx_spark() of own sparks (memory), optional background churn.

Churner g_churner;

void BM_LookupOwn(benchmark::State &st)
{
    World *w = world_or_skip(st);
    if (!w)
        return;
    const int t = st.thread_index(), T = st.threads();
    const bool churn = st.range(1) != 0;
    if (T > kMaxThreads) {
        st.SkipWithError("too many threads");
        return;
    }
    if (t == 0 && churn)
        g_churner.start(w->self, g_churn.size() * 3 / 4, g_churn.size(), 64, 500);
    Samples &s = g_samp[t][0];
    s.reset(kLoopSamples);
    Rng rng(uint64_t(1000 + t));
    const size_t n = w->n;
    uint64_t errs = 0, calls = 0;
    char buf[MPX_ADDRESS_MAX + 1];
    for (auto _ : st) {
        const Id id = g_own[rng.below(n)]; // a copy: the id is in cache, as a gateway's
        size_t bl = sizeof buf;
        uint64_t a = t_begin();
        int rc = mpx_spark(w->self, id.s, id.n, buf, &bl);
        uint64_t b = t_end();
        s.add(b - a);
        errs += rc != 0;
        calls++;
    }
    st.counters["lookups_per_s"] = benchmark::Counter(double(calls), benchmark::Counter::kIsRate);
    put_errors(st, errs);
    if (t == 0) {
        if (churn) {
            st.counters["bg_changes_per_s"] = g_churner.stop();
            put_errors(st, errs + g_churner.errors());
            mpx_flush(w->self, kFlushTimeoutMs);
        }
        std::vector<const Samples *> v;
        for (int i = 0; i < T; i++)
            v.push_back(&g_samp[i][0]);
        put_pct(st, "", percentiles(v));
    }
}

// ---------------------------------------------------------------------------
// Lookups that need Redis (one thread).

enum LookupKind { kUnknown = 0, kRemote = 1, kRemoteCached = 2 };

void warm_reader(World *w)
{
    if (w->reader_warm)
        return;
    double t0 = now_s();
    const size_t B = 1000;
    std::vector<const void *> ids(B);
    std::vector<size_t> lens(B);
    for (size_t k = 0; k < w->n; k += B) {
        size_t m = std::min(B, w->n - k);
        for (size_t i = 0; i < m; i++) {
            ids[i] = g_peer[k + i].s;
            lens[i] = g_peer[k + i].n;
        }
        mpx_list_t *out = nullptr;
        if (mpx_sparks(w->reader, ids.data(), lens.data(), m, &out) == 0)
            mpx_list_free(out);
    }
    w->reader_warm = true;
    fprintf(stderr, "metroplex-bench: remote cache warmed with %zu lookups in %.1f s\n", w->n,
            now_s() - t0);
}

void BM_LookupRedis(benchmark::State &st, LookupKind kind)
{
    World *w = world_or_skip(st);
    if (!w)
        return;
    mpx_t *m = kind == kRemoteCached ? w->reader : w->self;
    if (kind == kRemoteCached)
        warm_reader(w);
    const std::vector<Id> &pool = kind == kUnknown ? g_unknown : g_peer;
    const size_t n = kind == kUnknown ? pool.size() : w->n;
    const int expect = kind == kUnknown ? MPX_ENOTFOUND : 0;
    mpx_stats_t s0, s1;
    memset(&s0, 0, sizeof s0);
    memset(&s1, 0, sizeof s1);
    mpx_stats(m, &s0);
    Samples &s = g_samp[0][0];
    s.reset(kLoopSamples);
    Rng rng(77);
    uint64_t errs = 0, calls = 0;
    char buf[MPX_ADDRESS_MAX + 1];
    for (auto _ : st) {
        const Id id = pool[rng.below(n)];
        size_t bl = sizeof buf;
        uint64_t a = t_begin();
        int rc = mpx_spark(m, id.s, id.n, buf, &bl);
        uint64_t b = t_end();
        s.add(b - a);
        errs += rc != expect;
        calls++;
    }
    mpx_stats(m, &s1);
    put_pct(st, "", percentiles({&s}));
    st.counters["lookups_per_s"] = benchmark::Counter(double(calls), benchmark::Counter::kIsRate);
    const double hits = double(s1.lookup_hits - s0.lookup_hits),
                 misses = double(s1.lookup_misses - s0.lookup_misses);
    if (hits + misses > 0)
        st.counters["hit_ratio"] = hits / (hits + misses);
    put_errors(st, errs);
}

// ---------------------------------------------------------------------------
// SparksBatch: mpx_sparks() of B other-server ids (one HMGET).

void BM_SparksBatch(benchmark::State &st)
{
    World *w = world_or_skip(st);
    if (!w)
        return;
    const size_t B = size_t(st.range(1));
    std::vector<const void *> ids(B);
    std::vector<size_t> lens(B);
    Samples &s = g_samp[0][0];
    s.reset(kLoopSamples);
    Rng rng(99);
    uint64_t errs = 0, calls = 0, unknown = 0;
    for (auto _ : st) {
        for (size_t i = 0; i < B; i++) {
            const Id &id = g_peer[rng.below(w->n)];
            ids[i] = id.s;
            lens[i] = id.n;
        }
        mpx_list_t *out = nullptr;
        uint64_t a = t_begin();
        int rc = mpx_sparks(w->self, ids.data(), lens.data(), B, &out);
        uint64_t b = t_end();
        s.add(b - a);
        if (rc) {
            errs++;
        } else {
            for (size_t i = 0; i < out->count; i++)
                unknown += out->items[i] == nullptr;
            mpx_list_free(out);
        }
        calls++;
    }
    put_pct(st, "", percentiles({&s}));
    st.counters["ids_per_s"] = benchmark::Counter(double(calls * B), benchmark::Counter::kIsRate);
    put_errors(st, errs + unknown);
}

// ---------------------------------------------------------------------------
// SparksAsync: mpx_sparks_async(), up to 64 requests in flight.

struct AsyncCtx {
    Samples samp;               // written by the lookup thread only
    std::atomic<uint64_t> done{0};
    std::atomic<uint64_t> errors{0};
};
AsyncCtx g_async;

void async_cb(mpx_t *, int err, mpx_list_t *result, void *data)
{
    uint64_t t = t_end();
    g_async.samp.add(t - uint64_t(reinterpret_cast<uintptr_t>(data)));
    if (err)
        g_async.errors.fetch_add(1, std::memory_order_relaxed);
    mpx_list_free(result);
    g_async.done.fetch_add(1, std::memory_order_release);
}

void BM_SparksAsync(benchmark::State &st)
{
    World *w = world_or_skip(st);
    if (!w)
        return;
    const size_t B = size_t(st.range(1));
    const uint64_t depth = 64;
    std::vector<const void *> ids(B);
    std::vector<size_t> lens(B);
    g_async.samp.reset(kLoopSamples);
    g_async.done.store(0);
    g_async.errors.store(0);
    Rng rng(123);
    uint64_t sent = 0, refused = 0;
    for (auto _ : st) {
        for (size_t i = 0; i < B; i++) {
            const Id &id = g_peer[rng.below(w->n)];
            ids[i] = id.s;
            lens[i] = id.n;
        }
        // Wait for a free slot: bounded by 30 s (then the run is an error).
        const double deadline = now_s() + 30;
        while (sent - g_async.done.load(std::memory_order_acquire) >= depth) {
            if (now_s() > deadline)
                break;
            std::this_thread::yield();
        }
        void *stamp = reinterpret_cast<void *>(uintptr_t(t_begin()));
        int rc = mpx_sparks_async(w->self, ids.data(), lens.data(), B, async_cb, stamp);
        if (rc)
            refused++;
        else
            sent++;
    }
    const double deadline = now_s() + 30;
    while (g_async.done.load(std::memory_order_acquire) < sent && now_s() < deadline)
        std::this_thread::sleep_for(std::chrono::microseconds(100));
    const uint64_t done = g_async.done.load(std::memory_order_acquire);
    if (done < sent) {
        st.SkipWithError("mpx_sparks_async: callbacks missing after 30 s");
        return;
    }
    put_pct(st, "", percentiles({&g_async.samp}));
    st.counters["ids_per_s"] = benchmark::Counter(double(sent * B), benchmark::Counter::kIsRate);
    put_errors(st, refused + g_async.errors.load());
}

// ---------------------------------------------------------------------------
// Registration

double stat_max(const std::vector<double> &v)
{
    return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end());
}

void register_all()
{
    using benchmark::RegisterBenchmark;
    const int64_t big = int64_t(g.big);
    const int reps = g.reps;

    // Fresh registries, no world alive.
    for (int hint : {0, 1})
        RegisterBenchmark("Memory", BM_Memory)
            ->Args({big, hint})
            ->ArgNames({"sparks", "hint"})
            ->Setup(setup_no_world)
            ->Iterations(1)
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond)
            ->Repetitions(reps)
            ->DisplayAggregatesOnly(reps > 1);
    for (int T : {1, 2})
        for (int hint : {0, 1})
            RegisterBenchmark("ConnectFill", BM_ConnectFill)
                ->Args({big, T, hint})
                ->ArgNames({"sparks", "threads", "hint"})
                ->Setup(setup_no_world)
                ->Iterations(1)
                ->UseManualTime()
                ->Unit(benchmark::kMillisecond)
                ->Repetitions(reps)
                ->ComputeStatistics("max", stat_max)
                ->DisplayAggregatesOnly(reps > 1);
    for (int T : {1, 2})
        RegisterBenchmark("Commit", BM_Commit)
            ->Args({big, T})
            ->ArgNames({"sparks", "threads"})
            ->Setup(setup_no_world)
            ->Iterations(1)
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond)
            ->Repetitions(reps)
            ->DisplayAggregatesOnly(reps > 1);

    for (int64_t n : {int64_t(g.small), big}) {
        auto common = [&](benchmark::internal::Benchmark *b) {
            return b->Setup(setup_world)->UseRealTime()->Repetitions(reps)->DisplayAggregatesOnly(
                reps > 1);
        };
        common(RegisterBenchmark("ConnectDisconnect", BM_ConnectDisconnect)
                   ->Arg(n)
                   ->ArgName("sparks")
                   ->ThreadRange(1, g.max_threads))
            ->ComputeStatistics("max", stat_max);
        for (int churn : {0, 1})
            common(RegisterBenchmark("LookupOwn", BM_LookupOwn)
                       ->Args({n, churn})
                       ->ArgNames({"sparks", "churn"})
                       ->ThreadRange(1, g.max_threads))
                ->ComputeStatistics("max", stat_max);
        common(RegisterBenchmark("LookupUnknown", BM_LookupRedis, kUnknown)->Arg(n)->ArgName("sparks"));
        common(RegisterBenchmark("LookupRemote", BM_LookupRedis, kRemote)->Arg(n)->ArgName("sparks"));
        common(RegisterBenchmark("LookupRemoteCached", BM_LookupRedis, kRemoteCached)
                   ->Arg(n)
                   ->ArgName("sparks"));
        for (int64_t B : {1, 10, 100, 1000})
            common(RegisterBenchmark("SparksBatch", BM_SparksBatch)->Args({n, B}))
                ->ArgNames({"sparks", "batch"});
        for (int64_t B : {1, 100})
            common(RegisterBenchmark("SparksAsync", BM_SparksAsync)->Args({n, B}))
                ->ArgNames({"sparks", "batch"});
    }
}

// ---------------------------------------------------------------------------
// Console output plus a summary of the medians at the end

std::string fmt_ns(double ns)
{
    char b[32];
    if (ns < 1e3)
        snprintf(b, sizeof b, "%.0fns", ns);
    else if (ns < 1e6)
        snprintf(b, sizeof b, "%.1fus", ns / 1e3);
    else if (ns < 1e9)
        snprintf(b, sizeof b, "%.2fms", ns / 1e6);
    else
        snprintf(b, sizeof b, "%.2fs", ns / 1e9);
    return b;
}

std::string fmt_num(double v)
{
    char b[32];
    if (v >= 1e6)
        snprintf(b, sizeof b, "%.2fM", v / 1e6);
    else if (v >= 1e4)
        snprintf(b, sizeof b, "%.1fk", v / 1e3);
    else
        snprintf(b, sizeof b, "%.3g", v);
    return b;
}

std::string fmt_counter(const std::string &k, double v)
{
    auto ends = [&](const char *suf) {
        size_t n = strlen(suf);
        return k.size() >= n && k.compare(k.size() - n, n, suf) == 0;
    };
    if (ends("_ns"))
        return fmt_ns(v);
    if (ends("_us"))
        return fmt_ns(v * 1e3);
    if (ends("_s") && !ends("_per_s"))
        return fmt_ns(v * 1e9);
    if (ends("_per_s"))
        return fmt_num(v) + "/s";
    if (ends("bytes_per_spark")) {
        char b[32];
        snprintf(b, sizeof b, "%.1fB", v);
        return b;
    }
    if (k == "hit_ratio") {
        char b[32];
        snprintf(b, sizeof b, "%.3f", v);
        return b;
    }
    return fmt_num(v);
}

class SummaryReporter : public benchmark::ConsoleReporter {
  public:
    explicit SummaryReporter(OutputOptions o) : ConsoleReporter(o) {}
    int errors = 0;

    void ReportRuns(const std::vector<Run> &runs) override
    {
        ConsoleReporter::ReportRuns(runs);
        for (const Run &r : runs) {
            if (r.error_occurred) {
                errors++;
                continue;
            }
            // function/args/threads, without min_time, repeats, time type
            std::string name = r.run_name.function_name;
            if (!r.run_name.args.empty())
                name += "/" + r.run_name.args;
            if (!r.run_name.threads.empty())
                name += "/" + r.run_name.threads;
            const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
            const bool single = r.run_type == Run::RT_Iteration && r.repetitions <= 1;
            Row &row = row_of(name);
            if (median || single) {
                row.reps = median ? int(r.repetitions) : 1;
                for (const auto &kv : r.counters)
                    row.c[kv.first] = kv.second.value;
            } else if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "max") {
                for (const auto &kv : r.counters)
                    if (kv.first.size() >= 6 &&
                        kv.first.compare(kv.first.size() - 6, 6, "max_ns") == 0)
                        row.worst[kv.first] = kv.second.value;
            }
        }
    }

    void Finalize() override
    {
        ConsoleReporter::Finalize();
        std::ostream &out = GetOutputStream();
        out << "\nmetroplex-bench summary (median over repetitions; latencies are per call,\n"
               "p50/p99/p99.9/max over every timed call; max_worst = worst repetition)\n";
        for (const Row &row : rows_) {
            if (row.c.empty())
                continue;
            std::string line = "  " + row.name + " [" + std::to_string(row.reps) + "x]";
            std::vector<std::string> keys;
            for (const char *k : kOrder)
                if (row.c.count(k))
                    keys.push_back(k);
            for (const auto &kv : row.c)
                if (std::find(keys.begin(), keys.end(), kv.first) == keys.end())
                    keys.push_back(kv.first);
            for (const std::string &k : keys) {
                std::string label = k;
                for (const char *suf : {"_ns", "_us"})
                    if (label.size() > 3 && label.compare(label.size() - 3, 3, suf) == 0)
                        label.resize(label.size() - 3);
                line += " " + label + "=" + fmt_counter(k, row.c.at(k));
                auto wi = row.worst.find(k);
                if (wi != row.worst.end() && row.reps > 1)
                    line += " " + label + "_worst=" + fmt_counter(k, wi->second);
            }
            out << line << "\n";
        }
        if (errors)
            out << "  " << errors << " benchmark run(s) reported an error\n";
        out.flush();
    }

  private:
    struct Row {
        std::string name;
        int reps = 1;
        std::map<std::string, double> c, worst;
    };
    static constexpr const char *kOrder[] = {
        "p50_ns", "p99_ns", "p999_ns", "max_ns",
        "connect_p50_ns", "connect_p99_ns", "connect_p999_ns", "connect_max_ns",
        "disconnect_p50_ns", "disconnect_p99_ns", "disconnect_p999_ns", "disconnect_max_ns",
        "lookups_per_s", "ids_per_s", "connects_per_s", "changes_per_s", "sparks_per_s",
        "commit_sparks_per_s", "connect_s", "flush_s", "peak_bytes_per_spark",
        "settled_bytes_per_spark"};
    std::vector<Row> rows_;
    std::map<std::string, size_t> index_;
    Row &row_of(const std::string &name)
    {
        auto it = index_.find(name);
        if (it != index_.end())
            return rows_[it->second];
        index_[name] = rows_.size();
        rows_.push_back(Row());
        rows_.back().name = name;
        return rows_.back();
    }
};
constexpr const char *SummaryReporter::kOrder[];

long env_long(const char *name, long lo, long hi, long dflt)
{
    const char *e = getenv(name);
    if (!e || !*e)
        return dflt;
    char *end = nullptr;
    long v = strtol(e, &end, 10);
    if (*end || v < lo || v > hi) {
        fprintf(stderr, "metroplex-bench: ignoring %s=%s (expected %ld..%ld)\n", name, e, lo, hi);
        return dflt;
    }
    return v;
}

// $MPX_BENCH_LAYOUT and $MPX_BENCH_SHARDS into g (also in the memory
// child, which inherits the environment). False on a bad value.
bool read_layout_env()
{
    const char *e = getenv("MPX_BENCH_LAYOUT");
    if (e && *e) {
        if (strcmp(e, "node") == 0)
            g.layout = MPX_LAYOUT_NODE;
        else if (strcmp(e, "sharded") == 0)
            g.layout = MPX_LAYOUT_SHARDED;
        else if (strcmp(e, "auto") == 0)
            g.layout = MPX_LAYOUT_AUTO;
        else {
            fprintf(stderr, "metroplex-bench: MPX_BENCH_LAYOUT=%s: expected node, sharded or auto\n", e);
            return false;
        }
    }
    g.shards = uint32_t(env_long("MPX_BENCH_SHARDS", 1, 16384, 0));
    return true;
}

} // namespace

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], kMemoryChildFlag) == 0)
        return read_layout_env() ? memory_child(argc, argv) : 2;
    bool list_only = false, own_format = false, color = isatty(1);
    const char *smoke_env = getenv("MPX_BENCH_SMOKE");
    if (smoke_env && *smoke_env && strcmp(smoke_env, "0") != 0)
        g.smoke = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--benchmark_min_time=", 21) == 0 && atof(a + 21) < 0.1)
            g.smoke = true;
        if (strncmp(a, "--benchmark_list_tests", 22) == 0 && strcmp(a, "--benchmark_list_tests=false") != 0)
            list_only = true;
        if (strncmp(a, "--benchmark_format=", 19) == 0 && strcmp(a + 19, "console") != 0)
            own_format = true;
        if (strncmp(a, "--benchmark_color=", 18) == 0)
            color = strcmp(a + 18, "false") != 0 && strcmp(a + 18, "no") != 0;
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;

    g.big = size_t(env_long("MPX_BENCH_SPARKS", 1000, 10000000, g.smoke ? 20000 : 1000000));
    g.small = std::min<size_t>(10000, g.big);
    g.reps = int(env_long("MPX_BENCH_REPS", 1, 20, g.smoke ? 1 : 3));
    unsigned hw = std::thread::hardware_concurrency();
    g.max_threads = int(env_long("MPX_BENCH_THREADS", 1, kMaxThreads,
                                 std::max(2, std::min(8, int(hw ? hw : 2)))));
    if (!read_layout_env())
        return 1;

    if (!list_only) {
        const char *url = getenv("MPX_BENCH_REDIS_URL");
        if (url && *url) {
            g.url = url;
        } else {
            if (redis_proc_start(&g_redis, nullptr) != 0) {
                fprintf(stderr, "metroplex-bench: cannot start redis-server "
                                "(set MPX_BENCH_REDIS_URL to use a running one)\n");
                return 1;
            }
            g.own_redis = true;
            g.url = g_redis.url;
        }
        double t0 = now_s();
        make_pools();
        calibrate_clock(g.smoke ? 0.02 : 0.2);
        fprintf(stderr, "metroplex-bench: %s mode, %zu-spark pools ready in %.2f s, Redis %s%s\n",
                g.smoke ? "smoke" : "full", g.big, now_s() - t0, g.url.c_str(),
                g.own_redis ? " (private)" : "");
    }
    benchmark::AddCustomContext("mpx_mode", g.smoke ? "smoke" : "full");
    benchmark::AddCustomContext("mpx_sparks", std::to_string(g.big));
    benchmark::AddCustomContext("mpx_repetitions", std::to_string(g.reps));
    benchmark::AddCustomContext("mpx_redis", g.url + (g.own_redis ? " (private)" : ""));
    {
        std::string lay = sharded_layout() ? "sharded" : "node";
        if (sharded_layout())
        {
            mpx_options_t d;
            mpx_options_init(&d);
            lay += ", " + std::to_string(g.shards ? g.shards : d.shards) + " shards";
        }
        if (g.layout == MPX_LAYOUT_AUTO)
            lay += " (auto)";
        benchmark::AddCustomContext("mpx_layout", lay);
    }
    benchmark::AddCustomContext("tsc_ns_per_tick", std::to_string(g_ns_per_tick));
    benchmark::AddCustomContext("timer_overhead_ns", std::to_string(g_timer_overhead_ns));
    benchmark::AddCustomContext("peak_rss", reset_hwm() ? "VmHWM, reset before each fill"
                                                        : "max of VmRSS samples (no clear_refs)");
    register_all();

    int errors = 0;
    if (own_format || list_only) {
        benchmark::RunSpecifiedBenchmarks();
    } else {
        SummaryReporter rep(color ? benchmark::ConsoleReporter::OO_ColorTabular
                                  : benchmark::ConsoleReporter::OO_Tabular);
        benchmark::RunSpecifiedBenchmarks(&rep);
        errors = rep.errors;
    }
    world_release();
    if (g.own_redis)
        redis_proc_destroy(&g_redis);
    benchmark::Shutdown();
    if (g_bg_errors.load())
        fprintf(stderr, "metroplex-bench: %" PRIu64 " background errors reported by on_error\n",
                g_bg_errors.load());
    return errors ? 1 : 0;
}
