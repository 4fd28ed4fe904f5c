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
