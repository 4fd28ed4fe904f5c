#!/usr/bin/env bash
# tools/test.sh - the project's one test command (CI runs it through .ci/run).
#
#   bash tools/test.sh          everything: packages, npm deps, the normal,
#                               ASan+UBSan and TSan builds, their ctest suites,
#                               the sparkgen / bench smoke runs and a short
#                               libFuzzer run of fuzz/ (clang)
#   bash tools/test.sh --fast   the normal build only (no sanitizer builds)
#
# Works from any directory. Installs missing Debian packages (as root, or
# through sudo), starts ONE private redis-server on a free loopback port
# (never 6379) for the whole run, exports its URL as MPX_TEST_REDIS_URL and
# stops it by PID on exit; likewise one local Redis Cluster (tools/cluster.sh,
# MPX_TEST_CLUSTER_URL) for tests/test_cluster.c. The last line is the summary
# "tests: N passed, F failed": N is the number of ctest tests that passed,
# summed over the build variants; F counts failed ctest tests plus any other
# failed step (configure, build, smoke run), so the exit status is non-zero
# exactly when F > 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=tools/lib.sh
. "$ROOT/tools/lib.sh"

usage() {
    sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

FAST=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --fast) FAST=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "test.sh: unknown option: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

JOBS=2                 # the machines have 2 cores
CTEST_TIMEOUT=600      # seconds per ctest test
SMOKE_TIMEOUT=300      # seconds per smoke run
REDIS_PORT_MIN=20000
REDIS_PORT_MAX=60000

PASSED=0               # ctest tests passed, summed over variants
FAILED=0               # ctest tests failed + other failed steps
FAILURES=()            # one line per failed step, for the summary
TIMINGS=()             # "phase: Ns" lines, for the summary
RUN_T0=$SECONDS

# --- output helpers --------------------------------------------------------

PHASE_NAME=""
PHASE_T0=0
phase() {
    PHASE_NAME="$1"
    PHASE_T0=$SECONDS
    printf '\n==================== %s  [%s, +%ds] ====================\n' \
        "$PHASE_NAME" "$(date '+%H:%M:%S')" "$((SECONDS - RUN_T0))"
}
phase_done() { # phase_done STATUS
    local dt=$((SECONDS - PHASE_T0))
    printf -- '-------------------- %s: %s (%ds) --------------------\n' \
        "$PHASE_NAME" "$1" "$dt"
    TIMINGS+=("$(printf '%-34s %-7s %5ds' "$PHASE_NAME" "$1" "$dt")")
}
note() { printf 'test.sh: %s\n' "$*"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }
fail_step() { # fail_step MESSAGE: a failed step (not a ctest test)
    FAILURES+=("$1")
    FAILED=$((FAILED + 1))
    printf 'test.sh: FAILED: %s\n' "$1" >&2
}

# --- 1. packages -----------------------------------------------------------

APT_PACKAGES=(build-essential cmake pkg-config libhiredis-dev libck-dev
    libcriterion-dev libbenchmark-dev redis-server redis-tools nodejs npm
    clang libclang-rt-14-dev libcurl4-openssl-dev libmicrohttpd-dev libjansson-dev)

install_packages() {
    phase "packages"
    mpx_ensure_packages "${APT_PACKAGES[@]}" || die "could not install the packages"
    # Installing redis-server may have started a system redis on 6379: it is
    # not ours and is never used.
    phase_done ok
}

# --- 2. npm dependencies of the interop peer --------------------------------

npm_deps() {
    phase "npm (tests/interop)"
    local dir="$ROOT/tests/interop"
    if [ ! -f "$dir/package.json" ]; then
        note "tests/interop/package.json absent: skipped"
        phase_done skipped
        return
    fi
    local npm_flags=(--no-audit --no-fund --loglevel=error)
    if [ -f "$dir/package-lock.json" ]; then
        (cd "$dir" && npm ci "${npm_flags[@]}") || die "npm ci failed in tests/interop"
    else
        note "no package-lock.json: using npm install"
        (cd "$dir" && npm install "${npm_flags[@]}") || die "npm install failed in tests/interop"
    fi
    phase_done ok
}

# --- 3. the shared redis-server ------------------------------------------------

REDIS_PID=""
REDIS_PORT=""
REDIS_DIR=""

stop_redis() {
    mpx_stop_pid "$REDIS_PID"
    REDIS_PID=""
    if [ -n "$REDIS_DIR" ] && [ -d "$REDIS_DIR" ]; then
        rm -rf -- "$REDIS_DIR"
    fi
    REDIS_DIR=""
}

start_redis() {
    phase "redis-server"
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found"
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found"
    REDIS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mpx-test-redis.XXXXXX")"
    mpx_start_redis "$REDIS_DIR" "$REDIS_PORT_MIN" "$REDIS_PORT_MAX" ||
        die "could not start redis-server on a free loopback port"
    [ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping)" = "PONG" ] ||
        die "redis-server on port $REDIS_PORT does not answer PING"
    export MPX_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
    export MPX_BENCH_REDIS_URL="$MPX_TEST_REDIS_URL"
    note "redis-server pid $REDIS_PID at $MPX_TEST_REDIS_URL (dir $REDIS_DIR)"
    phase_done ok
}

# --- 3b. the shared Redis Cluster (tests/test_cluster.c) ---------------------

CLUSTER_DIR=""

stop_cluster() {
    if [ -n "$CLUSTER_DIR" ] && [ -d "$CLUSTER_DIR" ]; then
        bash "$ROOT/tools/cluster.sh" stop "$CLUSTER_DIR" || true
    fi
    CLUSTER_DIR=""
}

# Three masters with a replica each, on free loopback ports, for the whole
# run (tools/cluster.sh; the failover and reshard tests change it, and it
# stays usable). Exports MPX_TEST_CLUSTER_URL and MPX_TEST_CLUSTER_DIR.
start_cluster() {
    phase "redis cluster"
    CLUSTER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mpx-test-cluster.XXXXXX")"
    local url
    url=$(bash "$ROOT/tools/cluster.sh" start "$CLUSTER_DIR" --masters 3 --replicas 1) ||
        die "could not start a Redis Cluster (tools/cluster.sh start)"
    export MPX_TEST_CLUSTER_URL="$url"
    export MPX_TEST_CLUSTER_DIR="$CLUSTER_DIR"
    export MPX_TEST_REQUIRE_CLUSTER=1 # here a missing cluster fails, never skips
    note "redis cluster at $MPX_TEST_CLUSTER_URL (dir $CLUSTER_DIR)"
    phase_done ok
}

SUMMARY_PRINTED=0
on_exit() {
    local rc=$?
    stop_cluster
    stop_redis
    if [ "$SUMMARY_PRINTED" -eq 0 ] && [ "$rc" -ne 0 ]; then
        # Stopped early (setup error, interrupt): still end on a summary line.
        printf 'tests: %d passed, %d failed\n' "$PASSED" "$((FAILED + 1))"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 4. build, test and smoke per variant ----------------------------------

# configure_and_build NAME DIR CMAKE_ARGS... ; returns non-zero on failure
configure_and_build() {
    local name="$1" dir="$2"
    shift 2
    phase "$name: configure + build"
    if ! cmake -S "$ROOT" -B "$dir" "$@"; then
        phase_done FAILED
        fail_step "$name: cmake configure"
        return 1
    fi
    if ! cmake --build "$dir" -j"$JOBS"; then
        phase_done FAILED
        fail_step "$name: build"
        return 1
    fi
    phase_done ok
}

# run_ctest NAME DIR: runs the suite, adds to PASSED / FAILED
run_ctest() {
    local name="$1" dir="$2" log rc line total failed
    phase "$name: ctest"
    log="$dir/test.sh-ctest.log"
    if ctest --test-dir "$dir" --output-on-failure --timeout "$CTEST_TIMEOUT" \
        --no-tests=error 2>&1 | tee "$log"; then
        rc=0
    else
        rc=$?
    fi
    # "100% tests passed, 0 tests failed out of 7"
    line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)
    if [ -n "$line" ]; then
        failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
        total=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$line")
        PASSED=$((PASSED + total - failed))
        FAILED=$((FAILED + failed))
        if [ "$failed" -gt 0 ]; then
            FAILURES+=("$name: $failed of $total ctest tests failed")
        fi
        if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
            fail_step "$name: ctest exited $rc"
        fi
    else
        fail_step "$name: ctest ran no test or printed no result (exit $rc)"
    fi
    if grep -qE 'Could not initialize inheritable arena|ThreadSanitizer: SEGV .*libcriterion' "$log"; then
        note "Criterion's runner cannot start under ThreadSanitizer (its boxfort arena"
        note "maps at fixed addresses TSan reserves; Criterion issue #274): in the"
        note "MPX_SANITIZE=thread build the suites must use tests/tsan_shim instead."
    fi
    if [ "$rc" -eq 0 ]; then phase_done ok; else phase_done FAILED; fi
}

# smoke NAME DESCRIPTION BINARY ARGS...: runs a smoke command if BINARY exists
smoke() {
    local name="$1" what="$2" bin="$3"
    shift 3
    phase "$name: $what smoke"
    if [ ! -x "$bin" ]; then
        note "${bin#"$ROOT"/} not built: skipped"
        phase_done skipped
        return
    fi
    local rc=0
    timeout --kill-after=10 "$SMOKE_TIMEOUT" "$bin" "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        phase_done ok
    else
        phase_done FAILED
        [ "$rc" -ne 124 ] || note "timed out after ${SMOKE_TIMEOUT}s"
        fail_step "$name: $what smoke exited $rc"
    fi
}

SPARKGEN_ARGS=(--sparks 20000 --servers 2 --duration 1 --quiet)

# --- the cluster under load: reshard + forced failover ------------------------

# sparkgen against the shared cluster (sharded layout): 200,000 sparks over 4
# servers, 2 %/s churn for 25 s; meanwhile N slots are resharded and a
# replica is promoted with CLUSTER FAILOVER FORCE (tools/cluster.sh). Then
# sparkgen checks Redis exactly: the step passes only if it exits 0 with zero
# mismatches and both faults ended while the load still ran. --faults: the
# library's recovery reports (on_error) are expected here. ~30 s, bounded.
CLUSTER_LOAD_ARGS=(--sparks 200000 --servers 4 --duration 25 --churn 2 --interval 3000
    --latency 1000 --faults --json)
CLUSTER_LOAD_SLOTS=1000
CLUSTER_LOAD_TIMEOUT=100 # sparkgen's limit; each fault step has 60 s

cluster_load() {
    local bin="$1" dir="${MPX_TEST_CLUSTER_DIR:-}" url="${MPX_TEST_CLUSTER_URL:-}"
    phase "cluster load: reshard + failover"
    if [ ! -x "$bin" ]; then
        note "${bin#"$ROOT"/} not built: skipped"
        phase_done skipped
        return
    fi
    if [ -z "$dir" ] || [ -z "$url" ]; then
        phase_done FAILED
        fail_step "cluster load: no cluster (MPX_TEST_CLUSTER_DIR/URL unset)"
        return
    fi
    local log="$ROOT/build/cluster-load.log" pid rc=0 ok=1 out t0 mism result
    rm -f "$log" "$log.json"
    timeout --kill-after=10 "$CLUSTER_LOAD_TIMEOUT" "$bin" --redis "$url" \
        --namespace "mpxload-$$" "${CLUSTER_LOAD_ARGS[@]}" >"$log.json" 2>"$log" &
    pid=$!
    # The faults start once the load runs: churn started (at most 40 s).
    for _ in $(seq 1 400); do
        grep -q '^sparkgen: churn: .* per second' "$log" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if grep -q '^sparkgen: churn: .* per second' "$log" 2>/dev/null; then
        sleep 2
        t0=$SECONDS
        if out=$(timeout 60 bash "$ROOT/tools/cluster.sh" reshard "$dir" "$CLUSTER_LOAD_SLOTS" 2>&1); then
            note "reshard: $CLUSTER_LOAD_SLOTS slots moved (from/to ports: $out) in $((SECONDS - t0)) s"
        else
            note "reshard failed: $out"
            ok=0
        fi
        t0=$SECONDS
        if out=$(timeout 60 bash "$ROOT/tools/cluster.sh" failover "$dir" 2>&1); then
            note "failover: replica promoted (new/old master ports: $out) in $((SECONDS - t0)) s"
        else
            note "failover failed: $out"
            ok=0
        fi
        # Both faults must have ended while the churn still ran.
        if grep -q '^sparkgen: churn: .* pairs in' "$log" || ! kill -0 "$pid" 2>/dev/null; then
            note "the load ended before the faults did"
            ok=0
        fi
    else
        note "sparkgen's load did not start"
        ok=0
    fi
    wait "$pid" || rc=$?
    grep -E '^sparkgen: (error|warning)|^  (redis masters|library counters|library errors|background reports|mismatches|result)|^    [0-9]' \
        "$log" | head -n 40 || true
    mism=$(tail -n 1 "$log.json" 2>/dev/null | sed -n 's/.*"mismatches":\([0-9]*\).*/\1/p')
    result=$(tail -n 1 "$log.json" 2>/dev/null | sed -n 's/.*"result":"\([a-z]*\)".*/\1/p')
    note "sparkgen exit $rc, result ${result:-?}, mismatches ${mism:-?} (log: ${log#"$ROOT"/})"
    if [ "$rc" -eq 0 ] && [ "${mism:-x}" = "0" ] && [ "$result" = "ok" ] && [ "$ok" -eq 1 ]; then
        phase_done ok
    else
        [ "$rc" -ne 124 ] || note "sparkgen timed out after ${CLUSTER_LOAD_TIMEOUT}s"
        tail -n 30 "$log" || true
        phase_done FAILED
        fail_step "cluster load: reshard + failover (sparkgen exit $rc, mismatches ${mism:-?})"
    fi
}

FUZZ_TARGETS=(fuzz_redis_url fuzz_address fuzz_options fuzz_resp)
FUZZ_SECONDS=6         # per target: a short run; see README for long runs

# fuzz DIR: builds the libFuzzer targets (clang) and runs each briefly on a
# scratch copy of its seed corpus (fuzz/corpus/<target>); a crash, leak or
# broken invariant fails the step and leaves the reproducer in DIR/artifacts
fuzz() {
    local dir="$1" t rc
    if ! configure_and_build fuzz "$dir" -DCMAKE_C_COMPILER=clang \
        -DCMAKE_CXX_COMPILER=clang++ -DMPX_BUILD_FUZZ=ON -DMPX_BUILD_TESTS=OFF \
        -DMPX_BUILD_BENCH=OFF -DMPX_BUILD_TOOLS=OFF; then
        note "fuzz: targets not built"
        return
    fi
    phase "fuzz: ${#FUZZ_TARGETS[@]} targets x ${FUZZ_SECONDS}s"
    local failed=0
    for t in "${FUZZ_TARGETS[@]}"; do
        rm -rf "$dir/corpus/$t"
        mkdir -p "$dir/corpus/$t" "$dir/artifacts"
        rc=0
        timeout --kill-after=10 $((FUZZ_SECONDS + 60)) "$dir/fuzz/$t" \
            -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$dir/artifacts/$t-" -print_final_stats=1 \
            "$dir/corpus/$t" "$ROOT/fuzz/corpus/$t" >"$dir/$t.log" 2>&1 || rc=$?
        grep -E '^(Done|stat::number_of_executed_units)' "$dir/$t.log" | sed "s/^/$t: /" || true
        if [ "$rc" -ne 0 ]; then
            tail -n 30 "$dir/$t.log"
            fail_step "fuzz: $t exited $rc (reproducer in ${dir#"$ROOT"/}/artifacts)"
            failed=1
        fi
    done
    if [ "$failed" -eq 0 ]; then phase_done ok; else phase_done FAILED; fi
}

# variant NAME DIR SCALE CMAKE_ARGS...
variant() {
    local name="$1" dir="$2" scale="$3"
    shift 3
    export MPX_TEST_SCALE="$scale"
    if ! configure_and_build "$name" "$dir" "$@"; then
        note "$name: tests skipped (build failed)"
        return
    fi
    run_ctest "$name" "$dir"
    # The generator starts its own redis-server (no --redis given).
    smoke "$name" "sparkgen" "$dir/bin/metroplex-sparkgen" "${SPARKGEN_ARGS[@]}"
}

export MPX_SOURCE_DIR="$ROOT" # lets test_interop find tests/interop
export MPX_TEST_REQUIRE_INTEROP=1 # here a missing node fails, never skips
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$ROOT/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$ROOT/tests/tsan.supp"

main() {
    printf 'metroplex-c tests: %s run, root %s\n' \
        "$([ "$FAST" -eq 1 ] && echo fast || echo full)" "$ROOT"
    install_packages
    npm_deps
    start_redis
    start_cluster

    variant normal "$ROOT/build" 1 \
        -DMPX_WERROR=ON -DMPX_SANITIZE= \
        -DMPX_BUILD_TESTS=ON -DMPX_BUILD_BENCH=ON -DMPX_BUILD_TOOLS=ON
    smoke normal "bench" "$ROOT/build/bin/metroplex-bench" --benchmark_min_time=0.01
    # Faults under load (Redis killed/paused, connections dropped, servers
    # crashed/frozen), then an exact check of Redis; ~25 s, own redis-server.
    smoke normal "chaos" "$ROOT/build/bin/metroplex-chaos" --sparks 20000 --duration 20 --seed 1 --quiet
    # A reshard and a forced failover of the cluster under generator load.
    cluster_load "$ROOT/build/bin/metroplex-sparkgen"

    if [ "$FAST" -eq 0 ]; then
        variant asan "$ROOT/build-asan" 10 \
            -DMPX_WERROR=ON -DMPX_SANITIZE=address -DMPX_BUILD_BENCH=OFF \
            -DMPX_BUILD_TESTS=ON -DMPX_BUILD_TOOLS=ON
        variant tsan "$ROOT/build-tsan" 10 \
            -DMPX_WERROR=ON -DMPX_SANITIZE=thread -DMPX_BUILD_BENCH=OFF \
            -DMPX_BUILD_TESTS=ON -DMPX_BUILD_TOOLS=ON
        fuzz "$ROOT/build-fuzz"
    else
        note "--fast: sanitizer builds skipped"
    fi

    printf '\n==================== summary (%ds in all) ====================\n' \
        "$((SECONDS - RUN_T0))"
    local t f
    for t in "${TIMINGS[@]}"; do printf '  %s\n' "$t"; done
    if [ "${#FAILURES[@]}" -gt 0 ]; then
        printf 'failures:\n'
        for f in "${FAILURES[@]}"; do printf '  - %s\n' "$f"; done
    fi
    printf 'tests: %d passed, %d failed\n' "$PASSED" "$FAILED"
    SUMMARY_PRINTED=1
    [ "$FAILED" -eq 0 ]
}

main
