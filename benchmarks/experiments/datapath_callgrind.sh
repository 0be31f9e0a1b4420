#!/usr/bin/env bash
# Instructions per DATA message on each data path, from callgrind (docs/performance.md):
# each workload of datapath_work.py run for real and dry, the difference divided by its
# message count. Instruction counts hardly move with the machine's load, unlike time.
# Usage: benchmarks/experiments/datapath_callgrind.sh   (from the checkout's root; ~3 min)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }

ir() {  # ir PATH ARGS...: the instructions callgrind collected
    local out
    if ! out=$(AIOWSTUNNEL_DATA_PATH=$1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/experiments/datapath_work.py "${@:2}" 2>&1); then
        echo "datapath_work.py ${*:2} failed on the $1 path:" >&2
        echo "$out" >&2
        exit 1
    fi
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' <<<"$out"
}

printf '| workload | messages | python: instructions per message | native | native / python |\n'
printf '|---|---|---|---|---|\n'
for work in "send small" "send small --fused" "receive small" "send bulk" "receive bulk"; do
    read -r side size fused <<<"$work"
    count=$([ "$size" = small ] && echo 20000 || echo 400)
    declare -A per=()
    for path in python native; do
        full=$(ir "$path" $side $size $fused)
        dry=$(ir "$path" $side $size $fused --dry)
        per[$path]=$(( (full - dry) / count ))
    done
    ratio=$(awk -v n="${per[native]}" -v p="${per[python]}" 'BEGIN { printf "%.2f", n / p }')
    printf '| %s | %d | %d | %d | %s |\n' "$work" "$count" "${per[python]}" "${per[native]}" "$ratio"
done
