#!/usr/bin/env bash
# Instructions per round trip or per connection, both tunnel ends in one process
# (inproc.py) under callgrind: a run of 1300 operations less one of 300, divided by 1000, so
# that the set-up cancels out. Counts hardly move with the machine's load, unlike time.
# Usage: benchmarks/experiments/inproc_callgrind.sh rtt|connect [DIR|relays]   (DIR: a
# folder holding the aiowstunnel package to measure, put first on PYTHONPATH; default the
# checkout; relays: two minimal relays instead of the tunnel, the floor, rtt only)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
scen=${1:?rtt or connect}
dir=${2:-$root}
extra=()
if [ "$dir" = relays ]; then dir=$root; extra=(--relays); fi
ir() {
    (cd /tmp && PYTHONPATH=$dir valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$root/.venv/bin/python" "$here/inproc.py" --scen "$scen" --count "$1" "${extra[@]}" 2>&1) |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
small=$(ir 300)
large=$(ir 1300)
echo "$dir${extra[*]:+ (relays)}: $(( (large - small) / 1000 )) instructions per $scen ($small, $large)"
