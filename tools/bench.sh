#!/usr/bin/env bash
# tools/bench.sh - the benchmark command: installs what is missing, builds,
# starts ONE private redis-server on a free loopback port (never 6379) and
# runs, against it:
#   (a) build/bin/metroplex-bench: per-call latencies (p50/p99/max) of
#       connect/disconnect and lookups, memory per spark, commit throughput
#       (google-benchmark; its summary of medians is printed at its end);
#   (b) the ceiling: redis-cli --pipe loading the same variadic HSET/SADD
#       commands for N sparks (tools/pipe_baseline.sh);
#   (c) metroplex-c end to end: metroplex-sparkgen, N sparks over 4 servers
#       (and 200,000 over 1 server, the Node original's setting);
#   (d) the Node original (metroplex 1.0.2 via npm) committing 200,000 sparks
#       (tools/node_baseline; it runs out of heap near 1,000,000).
# (b)-(d) run R rounds, interleaved; the summary quotes medians.
# With --cluster, also a local 3-master Redis Cluster (tools/cluster.sh, no
# replicas) and, in every round, sparkgen N over 4 servers in the sharded
# layout on the single Redis and on the cluster, beside the node layout of
# (c); then metroplex-bench's Commit benchmark in the same three settings
# (MPX_BENCH_LAYOUT, MPX_BENCH_REDIS_URL). The summary puts the three side by
# side: committed sparks/s and Redis bytes per spark.
#
#   bash tools/bench.sh                 N = 1,000,000, R = 3 (5-10 min)
#   bash tools/bench.sh --quick         N = 100,000, Node 20,000, R = 1,
#                                       metroplex-bench in smoke mode
#   options: --sparks N  --node-sparks N  --reps R  --no-node  --no-bench
#            --cluster   the cluster comparison (above)
#            -- ARGS     pass ARGS to metroplex-bench (e.g.
#                        -- --benchmark_filter=Lookup)
#
# Results (logs, bench.json) go to build/bench-results/DATE/. The last lines
# are the summary table; exit status 0 when every step succeeded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=tools/lib.sh
. "$ROOT/tools/lib.sh"

usage() { sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { printf 'bench.sh: error: %s\n' "$*" >&2; exit 2; }
note() { printf 'bench.sh: %s\n' "$*"; }
int_arg() {
    if ! [[ "$2" =~ ^[0-9]+$ ]] || [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then
        die "$1 must be an integer in $3..$4 (got '$2')"
    fi
}

SPARKS=1000000
NODE_SPARKS=200000
SMALL_SPARKS=200000 # metroplex-c beside Node: same N, one server
REPS=3
QUICK=0
RUN_NODE=1
RUN_BENCH=1
RUN_CLUSTER=0
BENCH_ARGS=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --sparks) SPARKS="${2:-}"; shift ;;
        --node-sparks) NODE_SPARKS="${2:-}"; SMALL_SPARKS="${2:-}"; shift ;;
        --reps) REPS="${2:-}"; shift ;;
        --quick) QUICK=1; SPARKS=100000; NODE_SPARKS=20000; SMALL_SPARKS=20000; REPS=1 ;;
        --no-node) RUN_NODE=0 ;;
        --no-bench) RUN_BENCH=0 ;;
        --cluster) RUN_CLUSTER=1 ;;
        --) shift; BENCH_ARGS=("$@"); break ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (try --help)" ;;
    esac
    shift
done
int_arg --sparks "$SPARKS" 1000 100000000
int_arg --node-sparks "$NODE_SPARKS" 1 5000000
int_arg --reps "$REPS" 1 20

JOBS=2
RUN_T0=$SECONDS
FAILED=()
phase() { printf '\n==================== %s  [%s, +%ds] ====================\n' \
    "$1" "$(date '+%H:%M:%S')" "$((SECONDS - RUN_T0))"; }

# --- 1. packages, build, npm ------------------------------------------------

phase "packages"
mpx_ensure_packages build-essential cmake pkg-config libhiredis-dev libck-dev \
    libcriterion-dev libbenchmark-dev redis-server redis-tools nodejs npm \
    libcurl4-openssl-dev libmicrohttpd-dev libjansson-dev ||
    die "could not install the packages"
# Installing redis-server may have started a system redis on 6379: never used.

phase "build"
# A release-like build without sanitizers; warnings do not stop a benchmark run
# (tools/test.sh sets its own -DMPX_WERROR=ON / -DMPX_SANITIZE on each run).
cmake -S "$ROOT" -B "$ROOT/build" -DMPX_BUILD_BENCH=ON -DMPX_BUILD_TOOLS=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMPX_SANITIZE= -DMPX_WERROR=OFF >/dev/null ||
    die "cmake configure failed"
cmake --build "$ROOT/build" -j"$JOBS" --target metroplex-bench metroplex-sparkgen ||
    die "build failed"
BENCH_BIN="$ROOT/build/bin/metroplex-bench"
SPARKGEN_BIN="$ROOT/build/bin/metroplex-sparkgen"
[ -x "$BENCH_BIN" ] || die "build/bin/metroplex-bench not built (is libbenchmark-dev installed?)"

NODE_DIR="$ROOT/tools/node_baseline"
if [ "$RUN_NODE" -eq 1 ]; then
    phase "npm (tools/node_baseline)"
    if ! command -v node >/dev/null 2>&1; then
        note "node not found: the Node baseline is skipped"
        RUN_NODE=0
    elif [ -d "$NODE_DIR/node_modules/metroplex" ] && [ -d "$NODE_DIR/node_modules/ioredis" ]; then
        note "node_modules present"
    elif (cd "$NODE_DIR" && timeout 600 npm ci --no-audit --no-fund --loglevel=error); then
        note "npm ci done"
    elif [ -d "$ROOT/tests/interop/node_modules/metroplex" ]; then
        note "npm ci failed: using tests/interop/node_modules (same versions)"
    else
        note "npm ci failed: the Node baseline is skipped"
        FAILED+=("npm ci in tools/node_baseline")
        RUN_NODE=0
    fi
fi

# --- 2. one private redis-server ----------------------------------------------

REDIS_PID=""
REDIS_PORT=""
REDIS_DIR=""
RESULTS=""
CLUSTER_DIR=""

stop_redis() {
    mpx_stop_pid "$REDIS_PID"
    REDIS_PID=""
    if [ -n "$REDIS_DIR" ] && [ -d "$REDIS_DIR" ]; then rm -rf -- "$REDIS_DIR"; fi
    REDIS_DIR=""
    if [ -n "$CLUSTER_DIR" ] && [ -d "$CLUSTER_DIR" ]; then
        bash "$ROOT/tools/cluster.sh" stop "$CLUSTER_DIR" || true
    fi
    CLUSTER_DIR=""
}
trap stop_redis EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

phase "redis-server"
command -v redis-server >/dev/null 2>&1 || die "redis-server not found"
command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found"
REDIS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mpx-bench-redis.XXXXXX")"
mpx_start_redis "$REDIS_DIR" 20000 60000 ||
    die "could not start redis-server on a free loopback port"
URL="redis://127.0.0.1:$REDIS_PORT"
note "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') pid $REDIS_PID at $URL"

CLUSTER_URL=""
if [ "$RUN_CLUSTER" -eq 1 ]; then
    phase "redis cluster (3 masters, no replicas)"
    CLUSTER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mpx-bench-cluster.XXXXXX")"
    CLUSTER_URL=$(bash "$ROOT/tools/cluster.sh" start "$CLUSTER_DIR" --masters 3 --replicas 0) ||
        die "could not start a Redis Cluster (tools/cluster.sh start)"
    note "redis cluster at $CLUSTER_URL"
fi

RESULTS="$ROOT/build/bench-results/$(date '+%Y%m%d-%H%M%S')"
mkdir -p "$RESULTS"
note "results in ${RESULTS#"$ROOT"/}"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
note "$(nproc) CPUs, load average $LOAD_BEFORE (other work on the machine skews the figures)"

# --- 3. the throughput rounds: (b) ceiling, (c) metroplex-c, (d) Node ----------

PIPE=()
MPX=()
MPX1=()
NODE=()
MPXS=()   # --cluster: sharded layout, one Redis
MPXC=()   # --cluster: the cluster
BPS=()    # Redis bytes per spark: node layout, one Redis
BPSS=()   # sharded, one Redis
BPSC=()   # the cluster

# lazyfree_pending: the value of lazyfree_pending_objects in INFO on stdin.
lazyfree_pending() { tr -d '\r' | awk -F: '$1 == "lazyfree_pending_objects" { print $2 }'; }

# redis_idle: wait (at most 60 s) until Redis has freed what the previous step
# UNLINKed, so its lazyfree thread does not compete with the next measurement
# (with --cluster, every node of the cluster too).
redis_idle() {
    local ports=("$REDIS_PORT") p busy
    if [ -n "$CLUSTER_DIR" ] && [ -f "$CLUSTER_DIR/pids" ]; then
        while read -r _ p; do ports+=("$p"); done <"$CLUSTER_DIR/pids"
    fi
    for _ in $(seq 1 600); do
        busy=0
        for p in "${ports[@]}"; do
            [ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$p" INFO memory 2>/dev/null |
                lazyfree_pending)" = "0" ] || busy=1
        done
        [ "$busy" -eq 0 ] && return 0
        sleep 0.1
    done
    note "Redis still freeing memory after 60 s; measuring anyway"
}

# bytes_per_spark LOG: sparkgen's Redis bytes per spark ("redis memory:" line)
bytes_per_spark() {
    awk '/^ *redis memory:/ { for (i = 2; i <= NF; i++) if ($i == "B/spark") v = $(i - 1) }
        END { if (v != "") print v }' "$1"
}

# committed_rate LOG: sparkgen's committed sparks/s (the number before
# "sparks/s" on its "committed:" line)
committed_rate() {
    awk '/^ *committed:/ { for (i = 2; i < NF; i++) if ($(i + 1) == "sparks/s") v = $i }
        END { if (v != "") print v }' "$1"
}

# value_of LOG KEY: the number after KEY on the last matching line
value_of() { awk -v k="$2" '$1 == k { v = $2 } END { if (v != "") print v }' "$1"; }

for ((r = 1; r <= REPS; r++)); do
    phase "round $r/$REPS: redis-cli --pipe ceiling, $SPARKS sparks"
    log="$RESULTS/pipe-$r.log"
    redis_idle
    if timeout 900 bash "$ROOT/tools/pipe_baseline.sh" --port "$REDIS_PORT" --sparks "$SPARKS" \
        --servers 4 --reps 1 --namespace "mpxpipe-$$-$r" 2>&1 | tee "$log"; then
        v=$(value_of "$log" pipe_sparks_per_s)
        [ -n "$v" ] && PIPE+=("$v")
    else
        FAILED+=("pipe baseline round $r")
    fi

    phase "round $r/$REPS: metroplex-c (sparkgen), $SPARKS sparks over 4 servers"
    log="$RESULTS/sparkgen-$r.log"
    redis_idle
    if timeout 900 "$SPARKGEN_BIN" --redis "$URL" --sparks "$SPARKS" --servers 4 \
        --namespace "mpxsg-$$-$r" --quiet 2>&1 | tee "$log"; then
        v=$(committed_rate "$log")
        [ -n "$v" ] && MPX+=("$v")
        v=$(bytes_per_spark "$log")
        [ -n "$v" ] && BPS+=("$v")
    else
        FAILED+=("metroplex-sparkgen round $r")
    fi

    if [ "$RUN_CLUSTER" -eq 1 ]; then
        phase "round $r/$REPS: metroplex-c (sparkgen), $SPARKS sparks over 4 servers, sharded layout, one Redis"
        log="$RESULTS/sparkgen-sharded-$r.log"
        redis_idle
        if timeout 900 "$SPARKGEN_BIN" --redis "$URL" --layout sharded --sparks "$SPARKS" \
            --servers 4 --namespace "mpxsgs-$$-$r" --quiet 2>&1 | tee "$log"; then
            v=$(committed_rate "$log")
            [ -n "$v" ] && MPXS+=("$v")
            v=$(bytes_per_spark "$log")
            [ -n "$v" ] && BPSS+=("$v")
        else
            FAILED+=("metroplex-sparkgen (sharded, one Redis) round $r")
        fi

        phase "round $r/$REPS: metroplex-c (sparkgen), $SPARKS sparks over 4 servers, 3-master cluster"
        log="$RESULTS/sparkgen-cluster-$r.log"
        redis_idle
        if timeout 900 "$SPARKGEN_BIN" --redis "$CLUSTER_URL" --sparks "$SPARKS" --servers 4 \
            --namespace "mpxsgc-$$-$r" --quiet 2>&1 | tee "$log"; then
            v=$(committed_rate "$log")
            [ -n "$v" ] && MPXC+=("$v")
            v=$(bytes_per_spark "$log")
            [ -n "$v" ] && BPSC+=("$v")
        else
            FAILED+=("metroplex-sparkgen (cluster) round $r")
        fi
    fi

    phase "round $r/$REPS: metroplex-c (sparkgen), $SMALL_SPARKS sparks, 1 server"
    log="$RESULTS/sparkgen1-$r.log"
    redis_idle
    if timeout 900 "$SPARKGEN_BIN" --redis "$URL" --sparks "$SMALL_SPARKS" --servers 1 \
        --namespace "mpxsg1-$$-$r" --quiet 2>&1 | tee "$log"; then
        v=$(committed_rate "$log")
        [ -n "$v" ] && MPX1+=("$v")
    else
        FAILED+=("metroplex-sparkgen (1 server) round $r")
    fi

    if [ "$RUN_NODE" -eq 1 ]; then
        phase "round $r/$REPS: Node metroplex 1.0.2, $NODE_SPARKS sparks"
        log="$RESULTS/node-$r.log"
        redis_idle
        if timeout 900 node "$NODE_DIR/connect.js" --url "$URL" --sparks "$NODE_SPARKS" \
            --ns "mpxnode-$$-$r" 2>&1 | tee "$log"; then
            v=$(value_of "$log" node_sparks_per_s)
            [ -n "$v" ] && NODE+=("$v")
        else
            FAILED+=("Node baseline round $r")
        fi
    fi
done

# --- 4. (a) metroplex-bench --------------------------------------------------------

if [ "$RUN_BENCH" -eq 1 ]; then
    phase "metroplex-bench"
    redis_idle
    bench_env=(MPX_BENCH_REDIS_URL="$URL")
    [ "$QUICK" -eq 1 ] && bench_env+=(MPX_BENCH_SMOKE=1)
    if env "${bench_env[@]}" timeout 3600 "$BENCH_BIN" --benchmark_out="$RESULTS/bench.json" \
        --benchmark_out_format=json "${BENCH_ARGS[@]}" 2>&1 | tee "$RESULTS/bench.txt"; then
        :
    else
        FAILED+=("metroplex-bench")
    fi
fi

# --- 4b. --cluster: metroplex-bench's Commit benchmark in the three settings -------------

# commit_rows TXT: the "Commit/..." lines of a metroplex-bench summary
commit_rows() { grep -E '^ +Commit/' "$1" | sed 's/^ *//' || true; }

if [ "$RUN_CLUSTER" -eq 1 ] && [ "$RUN_BENCH" -eq 1 ]; then
    for setting in node sharded cluster; do
        phase "metroplex-bench Commit: $setting"
        redis_idle
        case "$setting" in
            node) bench_env=(MPX_BENCH_REDIS_URL="$URL" MPX_BENCH_LAYOUT=node) ;;
            sharded) bench_env=(MPX_BENCH_REDIS_URL="$URL" MPX_BENCH_LAYOUT=sharded) ;;
            cluster) bench_env=(MPX_BENCH_REDIS_URL="$CLUSTER_URL" MPX_BENCH_LAYOUT=sharded) ;;
        esac
        [ "$QUICK" -eq 1 ] && bench_env+=(MPX_BENCH_SMOKE=1)
        if env "${bench_env[@]}" timeout 1800 "$BENCH_BIN" --benchmark_filter='^Commit/' \
            2>&1 | tee "$RESULTS/bench-commit-$setting.txt"; then
            :
        else
            FAILED+=("metroplex-bench Commit ($setting)")
        fi
    done
fi

# --- 5. summary ----------------------------------------------------------------------

median() { # median of the arguments, or "-"
    [ "$#" -gt 0 ] || { echo "-"; return; }
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
ratio() { # ratio A B -> A / B with 2 decimals, or "-"
    if [ "$1" = "-" ] || [ "$2" = "-" ] || [ "$2" = "0" ]; then echo "-"; return; fi
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}
row() { printf '  %-62s %10s   %s\n' "$1" "$2" "$3"; }

P=$(median "${PIPE[@]+"${PIPE[@]}"}")
MS=$(median "${MPXS[@]+"${MPXS[@]}"}")
MC=$(median "${MPXC[@]+"${MPXC[@]}"}")
B=$(median "${BPS[@]+"${BPS[@]}"}")
BS=$(median "${BPSS[@]+"${BPSS[@]}"}")
BC=$(median "${BPSC[@]+"${BPSC[@]}"}")
M=$(median "${MPX[@]+"${MPX[@]}"}")
M1=$(median "${MPX1[@]+"${MPX1[@]}"}")
N=$(median "${NODE[@]+"${NODE[@]}"}")

phase "summary"
if [ "$RUN_BENCH" -eq 1 ] && [ -f "$RESULTS/bench.txt" ]; then
    sed -n '/^metroplex-bench summary/,$p' "$RESULTS/bench.txt"
    echo
fi
printf 'bench.sh summary: sparks committed per second, median of %d run(s); redis-server %s on loopback\n' \
    "$REPS" "$REDIS_PORT"
row "measurement" "sparks/s" "runs"
row "redis-cli --pipe ceiling ($SPARKS sparks, 4 servers)" "$P" "${PIPE[*]:-}"
row "metroplex-c sparkgen ($SPARKS sparks, 4 servers)" "$M" "${MPX[*]:-}"
row "metroplex-c sparkgen ($SMALL_SPARKS sparks, 1 server)" "$M1" "${MPX1[*]:-}"
if [ "$RUN_NODE" -eq 1 ]; then
    row "Node metroplex 1.0.2 ($NODE_SPARKS sparks, 1 server)" "$N" "${NODE[*]:-}"
fi
row "ratio metroplex-c / ceiling ($SPARKS sparks)" "$(ratio "$M" "$P")" ""
if [ "$RUN_NODE" -eq 1 ]; then
    row "ratio metroplex-c / Node ($SMALL_SPARKS vs $NODE_SPARKS sparks, 1 server)" "$(ratio "$M1" "$N")" ""
fi
if [ "$RUN_CLUSTER" -eq 1 ]; then
    printf '\ncluster comparison: sparkgen, %s sparks over 4 servers, median of %d run(s)\n' "$SPARKS" "$REPS"
    printf '  %-40s %12s %14s   %s\n' "setting" "sparks/s" "Redis B/spark" "runs (sparks/s)"
    printf '  %-40s %12s %14s   %s\n' "one Redis, node layout" "$M" "$B" "${MPX[*]:-}"
    printf '  %-40s %12s %14s   %s\n' "one Redis, sharded layout (64 shards)" "$MS" "$BS" "${MPXS[*]:-}"
    printf '  %-40s %12s %14s   %s\n' "3-master cluster, sharded (64 shards)" "$MC" "$BC" "${MPXC[*]:-}"
    printf '  %-40s %12s\n' "ratio cluster / one Redis node layout" "$(ratio "$MC" "$M")"
    printf '  %-40s %12s\n' "ratio one Redis sharded / node layout" "$(ratio "$MS" "$M")"
    printf '  per-master shares of the last cluster round: %s\n' \
        "${RESULTS#"$ROOT"/}/sparkgen-cluster-$REPS.log (\"redis masters\")"
    if [ "$RUN_BENCH" -eq 1 ]; then
        for setting in node sharded cluster; do
            if [ -f "$RESULTS/bench-commit-$setting.txt" ]; then
                printf '  metroplex-bench Commit, %s:\n' "$setting"
                commit_rows "$RESULTS/bench-commit-$setting.txt" | sed 's/^/    /'
            fi
        done
    fi
fi
printf 'load average before/after: %s / %s; results: %s (%ds in all)\n' "$LOAD_BEFORE" \
    "$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')" "${RESULTS#"$ROOT"/}" \
    "$((SECONDS - RUN_T0))"
if [ "${#FAILED[@]}" -gt 0 ]; then
    printf 'failed steps:\n'
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
