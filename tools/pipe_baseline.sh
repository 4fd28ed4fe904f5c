#!/usr/bin/env bash
# tools/pipe_baseline.sh - the ceiling for committing sparks: how fast a
# redis-server loads the same variadic commands metroplex-c's writer sends,
# fed by `redis-cli --pipe` (no MULTI/EXEC, no scripts, no library).
#
#   bash tools/pipe_baseline.sh --port PORT [options]
#
#   --port P          redis-server on 127.0.0.1:P (required; loopback only)
#   --sparks N        sparks to load (default 1000000)
#   --servers S       simulated servers; spark i belongs to server i % S
#                     (default 4, as metroplex-sparkgen)
#   --per-command C   sparks per HSET / SADD command (default 1000)
#   --reps R          repetitions (default 3); the median is printed last
#   --namespace NS    key prefix (default mpxpipe-PID); every repetition uses
#                     NS-REP and its keys are deleted afterwards
#
# For each server and each chunk of C of its sparks it generates
#   HSET NS:sparks id1 addr id2 addr ...      (C field/value pairs)
#   SADD NS:addr:sparks id1 id2 ...           (C members)
# with Primus-like ids ("1479200822465$12345", as metroplex-sparkgen) and
# addresses http://127.0.0.1:10000+s, as RESP into a temporary file (awk;
# not timed), then times only `redis-cli -p P --pipe < file`, checks
# HLEN == N, and deletes the keys (UNLINK).
# Output: one line per repetition, then "pipe_sparks_per_s MEDIAN".
set -euo pipefail

PORT=""
SPARKS=1000000
SERVERS=4
PER_COMMAND=1000
REPS=3
NS="mpxpipe-$$"

usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "pipe_baseline.sh: $*" >&2; exit 2; }
int_arg() {
    if ! [[ "$2" =~ ^[0-9]+$ ]] || [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then
        die "$1 must be an integer in $3..$4 (got '$2')"
    fi
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --port) PORT="${2:-}"; shift ;;
        --sparks) SPARKS="${2:-}"; shift ;;
        --servers) SERVERS="${2:-}"; shift ;;
        --per-command) PER_COMMAND="${2:-}"; shift ;;
        --reps) REPS="${2:-}"; shift ;;
        --namespace) NS="${2:-}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (try --help)" ;;
    esac
    shift
done
[ -n "$PORT" ] || die "--port is required (try --help)"
int_arg --port "$PORT" 1 65535
[ "$PORT" -ne 6379 ] || die "refusing port 6379: use a private redis-server"
int_arg --sparks "$SPARKS" 1 100000000
int_arg --servers "$SERVERS" 1 1024
int_arg --per-command "$PER_COMMAND" 1 100000
int_arg --reps "$REPS" 1 100
[[ "$NS" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--namespace: letters, digits, _ . - only"
command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found"

cli() { timeout 60 redis-cli -h 127.0.0.1 -p "$PORT" "$@"; }
[ "$(cli ping)" = "PONG" ] || die "no redis-server answering on 127.0.0.1:$PORT"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/mpx-pipe.XXXXXX")"
trap 'rm -rf -- "$TMP"' EXIT

# gen NS FILE: write the RESP protocol of the whole load.
gen() {
    LC_ALL=C awk -v ns="$1" -v N="$SPARKS" -v S="$SERVERS" -v C="$PER_COMMAND" '
    function bulk(s) { printf "$%d\r\n%s\r\n", length(s), s }
    function id(i) { return sprintf("%.0f$%.0f", 1479200822465 + int(i / 1024), i) }
    BEGIN {
        hkey = ns ":sparks"
        for (s = 0; s < S; s++) {
            cnt = int((N - s + S - 1) / S)        # sparks i = s, s+S, ... < N
            addr = "http://127.0.0.1:" (10000 + s)
            skey = ns ":" addr ":sparks"
            for (c = 0; c < cnt; c += C) {
                k = cnt - c < C ? cnt - c : C
                printf "*%d\r\n", 2 + 2 * k; bulk("HSET"); bulk(hkey)
                for (j = 0; j < k; j++) { bulk(id(s + (c + j) * S)); bulk(addr) }
                printf "*%d\r\n", 2 + k; bulk("SADD"); bulk(skey)
                for (j = 0; j < k; j++) bulk(id(s + (c + j) * S))
            }
        }
    }' >"$2"
}

# lazyfree_pending: the value of lazyfree_pending_objects in INFO on stdin.
lazyfree_pending() { tr -d '\r' | awk -F: '$1 == "lazyfree_pending_objects" { print $2 }'; }

# clean NS: delete the keys of one namespace, and wait (at most 60 s) until
# Redis's lazyfree thread has freed them, so it does not compete with what
# is measured next.
clean() {
    local args=("$1:sparks") s
    for ((s = 0; s < SERVERS; s++)); do args+=("$1:http://127.0.0.1:$((10000 + s)):sparks"); done
    cli UNLINK "${args[@]}" >/dev/null
    for _ in $(seq 1 600); do
        [ "$(cli INFO memory | lazyfree_pending)" = "0" ] && return 0
        sleep 0.1
    done
}

now_ns() { date +%s%N; }

RATES=()
for ((rep = 1; rep <= REPS; rep++)); do
    ns="$NS-$rep"
    file="$TMP/load-$rep.resp"
    t0=$(now_ns)
    gen "$ns" "$file"
    tg=$(now_ns)
    clean "$ns"
    t1=$(now_ns)
    out=$(cli --pipe <"$file" 2>&1) || { echo "$out" >&2; die "redis-cli --pipe failed"; }
    t2=$(now_ns)
    grep -q 'errors: 0,' <<<"$out" || { echo "$out" >&2; die "redis-cli --pipe reported errors"; }
    hlen=$(cli HLEN "$ns:sparks")
    [ "$hlen" = "$SPARKS" ] || die "HLEN $ns:sparks is $hlen, expected $SPARKS"
    clean "$ns"
    rm -f -- "$file"
    rate=$(awk -v n="$SPARKS" -v t="$((t2 - t1))" 'BEGIN { printf "%.0f", n / (t / 1e9) }')
    RATES+=("$rate")
    printf 'pipe rep %d: %d sparks (%d per command, %d servers) loaded in %.3f s: %d sparks/s (generation %.1f s, not timed)\n' \
        "$rep" "$SPARKS" "$PER_COMMAND" "$SERVERS" \
        "$(awk -v t="$((t2 - t1))" 'BEGIN { print t / 1e9 }')" "$rate" \
        "$(awk -v t="$((tg - t0))" 'BEGIN { print t / 1e9 }')"
done
median=$(printf '%s\n' "${RATES[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
echo "pipe_sparks_per_s $median"
