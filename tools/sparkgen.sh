#!/usr/bin/env bash
# tools/sparkgen.sh - the main job in one command: install what is needed,
# build, and run the spark generator against a throwaway redis-server that
# it starts on a free loopback port and stops at the end.
#
#   bash tools/sparkgen.sh                  1,000,000 sparks over 4 servers
#   bash tools/sparkgen.sh --sparks 200000  any metroplex-sparkgen options
#                                           (see: bash tools/sparkgen.sh --help)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/lib.sh
. "$ROOT/tools/lib.sh"

mpx_ensure_packages build-essential cmake pkg-config libhiredis-dev libck-dev \
    libcriterion-dev libbenchmark-dev redis-server redis-tools \
    libcurl4-openssl-dev libmicrohttpd-dev libjansson-dev >&2 ||
    { echo "sparkgen.sh: could not install the packages" >&2; exit 2; }
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMPX_BUILD_TOOLS=ON >/dev/null
cmake --build "$ROOT/build" -j2 --target metroplex-sparkgen >/dev/null

if [ "$#" -eq 0 ]; then
    set -- --sparks 1000000 --servers 4
fi
exec "$ROOT/build/bin/metroplex-sparkgen" "$@"
