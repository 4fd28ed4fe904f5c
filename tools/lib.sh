# shellcheck shell=bash
# tools/lib.sh - shell helpers shared by tools/test.sh, tools/sparkgen.sh and tools/bench.sh.
# Source it; it defines functions only.

# mpx_pkg_installed PKG: true when the Debian package (or, for nodejs/npm,
# a working command: NodeSource's nodejs bundles npm) is present.
mpx_pkg_installed() {
    case "$1" in
        nodejs) command -v node >/dev/null 2>&1 && return 0 ;;
        npm) command -v npm >/dev/null 2>&1 && return 0 ;;
    esac
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

# mpx_ensure_packages PKG...: install the missing ones with apt-get (as root,
# or through sudo). Prints what it does; returns non-zero on failure.
mpx_ensure_packages() {
    command -v dpkg >/dev/null 2>&1 || {
        echo "dpkg not found: this expects Debian 12 (install $* by hand)" >&2
        return 1
    }
    local missing=() p
    for p in "$@"; do
        mpx_pkg_installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "all $# packages present"
        return 0
    fi
    echo "installing missing packages: ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "not root and sudo not found; as root run: apt-get update && apt-get install -y ${missing[*]}" >&2
            return 1
        }
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update || return 1
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" || return 1
    for p in "${missing[@]}"; do
        mpx_pkg_installed "$p" || {
            echo "package $p still missing after apt-get install" >&2
            return 1
        }
    done
}

# mpx_port_in_use PORT: true if something listens on 127.0.0.1:PORT. A
# connect that succeeds, or hangs (a listener with a full backlog), means
# busy; one that is refused means free. Bounded: 2 s.
mpx_port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
    else
        local rc=0
        # shellcheck disable=SC2016 # $1 expands in the inner shell
        timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null || rc=$?
        [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]
    fi
}

# mpx_stop_pid PID: SIGTERM, wait at most 5 s, then SIGKILL; reap it. By PID,
# never by name. A PID that is gone already is fine.
mpx_stop_pid() {
    local pid="$1"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# mpx_start_redis DIR MIN MAX: start a throwaway redis-server (no
# persistence) on a free loopback port in MIN..MAX (never 6379), its files
# in DIR, and wait until the server answering there is this one (its
# process_id), at most ~10 s per port and 8 ports. Sets REDIS_PID as soon
# as the process starts (so the caller's EXIT trap can stop it) and
# REDIS_PORT once it answers; returns 1, with nothing left running, if no
# port worked. Messages go to stderr.
# shellcheck disable=SC2034 # REDIS_PORT is for the caller
mpx_start_redis() {
    local dir="$1" min="$2" max="$3" attempt port
    REDIS_PID="" REDIS_PORT=""
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$(shuf -i "$min-$max" -n 1)
        [ "$port" -ne 6379 ] || continue
        if mpx_port_in_use "$port"; then
            echo "port $port busy, trying another" >&2
            continue
        fi
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --dir "$dir" --daemonize no --logfile "$dir/redis.log" \
            </dev/null >"$dir/redis.out" 2>&1 &
        REDIS_PID=$!
        for _ in $(seq 1 100); do
            kill -0 "$REDIS_PID" 2>/dev/null || break
            if timeout 2 redis-cli -h 127.0.0.1 -p "$port" info server 2>/dev/null |
                grep -q "^process_id:$REDIS_PID"; then
                REDIS_PORT="$port"
                return 0
            fi
            sleep 0.1
        done
        echo "redis-server did not come up on port $port (attempt $attempt):" >&2
        tail -n 5 "$dir/redis.log" "$dir/redis.out" >&2 2>/dev/null || true
        kill -KILL "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
    done
    return 1
}
