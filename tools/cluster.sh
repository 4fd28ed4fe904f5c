#!/usr/bin/env bash
# tools/cluster.sh - a throwaway local Redis Cluster for tests and tools.
#
#   bash tools/cluster.sh start DIR [--masters 3] [--replicas 1]
#       start masters * (1 + replicas) redis-server processes on free
#       loopback ports (20000-50000; never 6379; the cluster bus port,
#       port + 10000, is checked free too), with cluster-enabled yes,
#       cluster-node-timeout 2000, no persistence, files in DIR/<port>; make
#       them a cluster (redis-cli --cluster create), wait until every node
#       says cluster_state:ok, print the seed URL
#       redis-cluster://127.0.0.1:P1,127.0.0.1:P2,... (the masters) and
#       write it to DIR/url. PIDs are recorded in DIR/pids ("pid port").
#   bash tools/cluster.sh stop DIR
#       stop exactly the recorded PIDs (TERM, KILL after 5 s), remove DIR
#   bash tools/cluster.sh failover DIR
#       promote a replica (CLUSTER FAILOVER FORCE) and wait until it is a
#       master and the cluster is ok again; prints "NEW_PORT OLD_PORT"
#   bash tools/cluster.sh reshard DIR N [FROM_PORT TO_PORT]
#       move N slots from one master to another (default: the master of
#       slot 0 to the next master) with redis-cli --cluster reshard, then
#       wait until the cluster is ok
#   bash tools/cluster.sh kill DIR
#       SIGKILL one master that has a replica (a crash: its replica takes
#       over after cluster-node-timeout); prints its port, returns at once
#   bash tools/cluster.sh revive DIR PORT
#       start the server of PORT again (same files: it rejoins, as a replica
#       if it was failed over) and wait until the cluster is ok
#   bash tools/cluster.sh url DIR      print the seed URL again
#
# Every wait is bounded; a step that does not converge fails with a message
# on stderr and a non-zero status. Processes are only ever signalled by the
# PIDs this script recorded (never by name).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/lib.sh
. "$ROOT/tools/lib.sh"

PORT_MIN=20000
PORT_MAX=50000 # bus ports (port + 10000) stay below 60000

die() { printf 'cluster.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'cluster.sh: %s\n' "$*" >&2; }

usage() { sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

cli() { # cli PORT ARGS...: one redis-cli call, bounded
    local port="$1"
    shift
    timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null
}

ports_of() { # ports_of DIR: the recorded ports, one per line
    [ -f "$1/pids" ] || die "$1/pids not found (not a cluster.sh directory?)"
    awk '{print $2}' "$1/pids"
}

# alive PID: the process exists, is not a zombie and is a redis-server (so a
# recycled PID is never signalled).
alive() {
    local pid="$1" state
    [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != "Z" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'redis-server'
}

state_ok() { # state_ok PORT: cluster_state:ok with every slot assigned and served
    local info
    info=$(cli "$1" cluster info) || return 1
    grep -q '^cluster_state:ok' <<<"$info" && grep -q '^cluster_slots_ok:16384' <<<"$info"
}

# wait_ok DIR SECONDS: every node says ok, knows every node and sees the
# same masters with the same slots; every replica's link to its master is up
wait_ok() {
    local dir="$1" secs="$2" deadline p n ref cur all repl
    deadline=$((SECONDS + secs))
    n=$(ports_of "$dir" | wc -l)
    while [ "$SECONDS" -lt "$deadline" ]; do
        all=1
        ref=""
        for p in $(ports_of "$dir"); do
            if ! state_ok "$p" ||
                [ "$(cli "$p" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')" != "$n" ]; then
                all=0
                break
            fi
            # a replica is in sync (a revived node resyncs first)
            repl=$(cli "$p" info replication | tr -d '\r') || { all=0; break; }
            if grep -q '^role:slave' <<<"$repl" && ! grep -q '^master_link_status:up' <<<"$repl"; then
                all=0
                break
            fi
            # this node's view of the masters and their slots (a slot being
            # migrated, "[slot->-id]", is only shown by the nodes concerned)
            cur=$(cli "$p" cluster nodes |
                awk '$3 ~ /master/ && $3 !~ /fail/ {s = $2; for (i = 9; i <= NF; i++) if ($i !~ /^\[/) s = s " " $i; print s}' |
                sort | tr '\n' ';') || { all=0; break; }
            if [ -z "$ref" ]; then
                ref="$cur"
            elif [ "$cur" != "$ref" ]; then
                all=0
                break
            fi
        done
        [ "$all" -eq 0 ] || return 0
        sleep 0.2
    done
    return 1
}

# --- start ---------------------------------------------------------------------

pick_port() { # pick_port TAKEN...: a free port (and bus port) not in TAKEN
    local p t ok
    for _ in $(seq 1 50); do
        p=$(shuf -i "$PORT_MIN-$PORT_MAX" -n 1)
        [ "$p" -ne 6379 ] || continue
        ok=1
        for t in "$@"; do
            if [ "$p" -eq "$t" ] || [ "$p" -eq $((t + 10000)) ] || [ $((p + 10000)) -eq "$t" ]; then
                ok=0
            fi
        done
        [ "$ok" -eq 1 ] || continue
        mpx_port_in_use "$p" && continue
        mpx_port_in_use $((p + 10000)) && continue
        echo "$p"
        return 0
    done
    return 1
}

# start_node DIR PORT: start one server; 0 once it answers as our process
start_node() {
    local dir="$1" port="$2" pid
    mkdir -p "$dir/$port"
    redis-server --port "$port" --bind 127.0.0.1 --protected-mode no \
        --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" \
        --cluster-node-timeout 2000 --appendonly no --save '' --repl-diskless-sync-delay 0 \
        --dir "$dir/$port" --daemonize no --logfile "$dir/$port/redis.log" \
        </dev/null >"$dir/$port/redis.out" 2>&1 &
    pid=$!
    echo "$pid $port" >>"$dir/pids"
    for _ in $(seq 1 100); do # at most ~10 s
        alive "$pid" || break
        if cli "$port" info server | grep -q "^process_id:$pid"; then
            return 0
        fi
        sleep 0.1
    done
    say "redis-server did not come up on port $port:"
    tail -n 5 "$dir/$port/redis.log" >&2 2>/dev/null || true
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    # Not part of the cluster: forget it, or every wait would poll its port.
    sed -i "/^$pid $port\$/d" "$dir/pids"
    rm -rf -- "${dir:?}/$port"
    return 1
}

cmd_start() {
    local dir="" masters=3 replicas=1
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --masters) masters="$2"; shift ;;
            --replicas) replicas="$2"; shift ;;
            -*) die "start: unknown option $1" ;;
            *) [ -z "$dir" ] || die "start: one DIR only"; dir="$1" ;;
        esac
        shift
    done
    [ -n "$dir" ] || die "start: DIR missing"
    [[ "$masters" =~ ^[0-9]+$ ]] && [ "$masters" -ge 3 ] || die "start: --masters must be >= 3"
    [[ "$replicas" =~ ^[0-9]+$ ]] || die "start: --replicas must be a number"
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found"
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found"
    if [ -e "$dir/pids" ]; then
        die "start: $dir/pids exists (a cluster runs there? use stop first)"
    fi
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    : >"$dir/pids"

    local total=$((masters * (1 + replicas))) ports=() p tries=0
    while [ "${#ports[@]}" -lt "$total" ]; do
        tries=$((tries + 1))
        [ "$tries" -le $((total + 10)) ] || { cmd_stop_pids "$dir"; die "start: could not start $total servers"; }
        p=$(pick_port "${ports[@]}") || continue
        if start_node "$dir" "$p"; then
            ports+=("$p")
        fi
    done

    local addrs=()
    for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
    if ! timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" \
        --cluster-yes >"$dir/create.log" 2>&1; then
        tail -n 20 "$dir/create.log" >&2
        cmd_stop_pids "$dir"
        die "start: redis-cli --cluster create failed"
    fi
    if ! wait_ok "$dir" 30; then
        cmd_stop_pids "$dir"
        die "start: the cluster did not reach cluster_state:ok within 30 s"
    fi
    local url="redis-cluster://" sep=""
    for p in "${ports[@]:0:$masters}"; do
        url="$url${sep}127.0.0.1:$p"
        sep=","
    done
    echo "$url" >"$dir/url"
    echo "$url"
}

# --- stop ----------------------------------------------------------------------

cmd_stop_pids() { # TERM every recorded PID, wait at most 5 s, KILL the rest
    local dir="$1" pid port left
    [ -f "$dir/pids" ] || return 0
    while read -r pid port; do
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done <"$dir/pids"
    for _ in $(seq 1 50); do
        left=0
        while read -r pid port; do
            alive "$pid" && left=1
        done <"$dir/pids"
        [ "$left" -eq 1 ] || break
        sleep 0.1
    done
    while read -r pid port; do
        if alive "$pid"; then
            say "pid $pid (port $port) ignored TERM: KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done <"$dir/pids"
}

cmd_stop() {
    local dir="${1:-}"
    [ -n "$dir" ] || die "stop: DIR missing"
    [ -d "$dir" ] || return 0
    [ -f "$dir/pids" ] || die "stop: $dir/pids not found; not removing $dir"
    cmd_stop_pids "$dir"
    rm -rf -- "$dir"
}

# --- failover ------------------------------------------------------------------

cmd_failover() {
    local dir="${1:-}" p replica="" master="" role
    [ -n "$dir" ] || die "failover: DIR missing"
    wait_ok "$dir" 20 || die "failover: the cluster is not ok before the failover"
    for p in $(ports_of "$dir"); do
        role=$(cli "$p" role | head -n 1) || continue
        if [ "$role" = "slave" ]; then
            replica="$p"
            master=$(cli "$p" role | sed -n 3p)
            break
        fi
    done
    [ -n "$replica" ] || die "failover: no replica found"
    [ "$(cli "$replica" cluster failover force)" = "OK" ] ||
        die "failover: CLUSTER FAILOVER FORCE on port $replica failed"
    local deadline=$((SECONDS + 20))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ "$(cli "$replica" role | head -n 1)" = "master" ] &&
            [ "$(cli "$master" role | head -n 1)" = "slave" ]; then
            break
        fi
        sleep 0.1
    done
    [ "$(cli "$replica" role | head -n 1)" = "master" ] ||
        die "failover: port $replica did not become master within 20 s"
    wait_ok "$dir" 20 || die "failover: the cluster did not settle within 20 s"
    echo "$replica $master"
}

# --- reshard -------------------------------------------------------------------

node_id() { cli "$1" cluster myid; }

cmd_reshard() {
    local dir="${1:-}" n="${2:-}" from="${3:-}" to="${4:-}" p seed
    [ -n "$dir" ] && [[ "$n" =~ ^[0-9]+$ ]] || die "reshard: usage: reshard DIR N [FROM_PORT TO_PORT]"
    wait_ok "$dir" 20 || die "reshard: the cluster is not ok before the reshard"
    seed=$(ports_of "$dir" | head -n 1)
    if [ -z "$from" ]; then
        # the master of slot 0, then the next master in port order
        local masters
        masters=$(cli "$seed" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ {split($2, a, "[:@]"); print a[2]}' | sort -n)
        from=$(cli "$seed" cluster nodes |
            awk '$3 ~ /master/ {for (i = 9; i <= NF; i++) if ($i ~ /^0(-|$)/) {split($2, a, "[:@]"); print a[2]}}')
        [ -n "$from" ] || die "reshard: no master serves slot 0"
        to=$(awk -v f="$from" '$1 != f {print; exit}' <<<"$masters")
        [ -n "$to" ] || die "reshard: no second master"
    fi
    local from_id to_id
    from_id=$(node_id "$from") && to_id=$(node_id "$to") || die "reshard: cannot read the node ids"
    if ! timeout 120 redis-cli --cluster reshard "127.0.0.1:$seed" --cluster-from "$from_id" \
        --cluster-to "$to_id" --cluster-slots "$n" --cluster-yes >"$dir/reshard.log" 2>&1; then
        tail -n 20 "$dir/reshard.log" >&2
        die "reshard: redis-cli --cluster reshard failed"
    fi
    wait_ok "$dir" 20 || die "reshard: the cluster did not settle within 20 s"
    echo "$from $to"
}

# --- kill, revive ----------------------------------------------------------------

cmd_kill() {
    local dir="${1:-}" p pid victim=""
    [ -n "$dir" ] || die "kill: DIR missing"
    wait_ok "$dir" 20 || die "kill: the cluster is not ok before the kill"
    for p in $(ports_of "$dir"); do
        # a master with a connected replica
        if [ "$(cli "$p" role | head -n 1)" = "master" ] &&
            [ "$(cli "$p" info replication | tr -d '\r' | sed -n 's/^connected_slaves://p')" -gt 0 ]; then
            victim="$p"
            break
        fi
    done
    [ -n "$victim" ] || die "kill: no master with a replica"
    pid=$(awk -v p="$victim" '$2 == p {print $1}' "$dir/pids" | tail -n 1)
    alive "$pid" || die "kill: pid $pid of port $victim is not running"
    kill -KILL "$pid"
    for _ in $(seq 1 50); do
        alive "$pid" || break
        sleep 0.1
    done
    echo "$victim"
}

cmd_revive() {
    local dir="${1:-}" port="${2:-}" pid
    [ -n "$dir" ] && [[ "$port" =~ ^[0-9]+$ ]] || die "revive: usage: revive DIR PORT"
    pid=$(awk -v p="$port" '$2 == p {print $1}' "$dir/pids" | tail -n 1)
    [ -n "$pid" ] || die "revive: port $port is not one of $dir/pids"
    alive "$pid" && die "revive: port $port still runs (pid $pid)"
    awk -v p="$port" '$2 != p' "$dir/pids" >"$dir/pids.new" && mv "$dir/pids.new" "$dir/pids"
    start_node "$dir" "$port" || die "revive: port $port did not start"
    wait_ok "$dir" 30 || die "revive: the cluster did not settle within 30 s"
}

# --- main ----------------------------------------------------------------------

[ "$#" -ge 1 ] || { usage >&2; exit 2; }
sub="$1"
shift
case "$sub" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    failover) cmd_failover "$@" ;;
    reshard) cmd_reshard "$@" ;;
    kill) cmd_kill "$@" ;;
    revive) cmd_revive "$@" ;;
    url) cat "${1:?url: DIR missing}/url" ;;
    -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
esac
