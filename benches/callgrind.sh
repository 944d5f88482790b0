#!/usr/bin/env bash
# Repeatable cost of one iteration of a workload of examples/roundtrips.rs
# (a round trip, resume + suspend back, for corostack and its peers; a
# greenlet ping-pong; a coroutine's whole life):
#
# - instructions: each workload runs under callgrind at N1 and N2
#   iterations; Ir(N2) - Ir(N1) over N2 - N1 is the instruction count of
#   one, with start-up, set-up and teardown cancelled out;
# - time: the median ns per iteration of RUNS native runs of TIMED
#   iterations each, pinned to one CPU with taskset when it is there.
#
# Usage: benches/callgrind.sh [workload...]
#   default: the round trips of all four crates and the greenlet ping-pong;
#   `life`: the whole lives (corostack pooled and reused, and the peers').
# Environment: N1 (1000000), N2 (2000000), RUNS (5), TIMED (10000000),
#              CPU (1), OUT (/tmp: where the callgrind files go); `life`
#              divides the counts by 10. TARGET=i686-unknown-linux-gnu
#              measures the 32-bit x86 build instead (built by .ci/cross,
#              statically linked; this machine's kernel and valgrind run
#              it natively).
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-1000000}
N2=${N2:-2000000}
RUNS=${RUNS:-5}
TIMED=${TIMED:-10000000}
CPU=${CPU:-1}
OUT=${OUT:-/tmp}
crates=("$@")
[ ${#crates[@]} -gt 0 ] || crates=(corostack corosensei context generator greenlet)
if [ "${crates[*]}" = life ]; then
    crates=(corostack-life corostack-life-reuse corosensei-life context-life generator-life)
    N1=$((N1 / 10)) N2=$((N2 / 10)) TIMED=$((TIMED / 10))
fi

command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

case "${TARGET:-}" in
    "")
        cargo build --release --example roundtrips >&2
        target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
        bin="$target_dir/release/examples/roundtrips" ;;
    i686-unknown-linux-gnu)
        .ci/cross "$TARGET" build --release --example roundtrips >&2
        bin="target/cross/$TARGET/release/examples/roundtrips" ;;
    *) echo "callgrind.sh: TARGET is x86_64's default or i686-unknown-linux-gnu (valgrind runs no other here)" >&2; exit 2 ;;
esac
[ -x "$bin" ] || { echo "callgrind.sh: no binary at $bin" >&2; exit 1; }

pin=()
if command -v taskset >/dev/null && taskset -c "$CPU" true 2>/dev/null; then
    pin=(taskset -c "$CPU")
fi

# The total Ir of a callgrind out file: its "summary:" line, or "totals:".
total_ir() {
    local ir
    ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$1")
    [ -n "$ir" ] || ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$1")
    [ -n "$ir" ] || { echo "callgrind.sh: no summary or totals line in $1" >&2; exit 1; }
    echo "$ir"
}

instructions() {
    local crate=$1 n ir=()
    for n in "$N1" "$N2"; do
        local file="$OUT/callgrind.roundtrips.$crate.$n"
        valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" "$crate" "$n" \
            >/dev/null 2>"$file.log" || { cat "$file.log" >&2; exit 1; }
        ir+=("$(total_ir "$file")")
    done
    awk -v a="${ir[0]}" -v b="${ir[1]}" -v n1="$N1" -v n2="$N2" \
        'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }'
}

median_ns() {
    local crate=$1 i
    for ((i = 0; i < RUNS; i++)); do
        "${pin[@]}" "$bin" "$crate" "$TIMED" | sed -n 's/.*ns_per_iteration=\([0-9.]*\).*/\1/p'
    done | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.2f (%s..%s)", m, v[1], v[NR] }'
}

echo "instructions: (Ir($N2) - Ir($N1)) / $((N2 - N1)); time: median of $RUNS runs of $TIMED${pin[*]:+, ${pin[*]}}"
printf '%-20s %10s   %s\n' workload "Ir/iter" "ns/iter median (min..max)"
for crate in "${crates[@]}"; do
    printf '%-20s %10s   %s\n' "$crate" "$(instructions "$crate")" "$(median_ns "$crate")"
done
