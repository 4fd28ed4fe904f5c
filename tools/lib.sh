# tools/lib.sh - shell helpers shared by tools/test.sh and tools/sparkgen.sh.
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
