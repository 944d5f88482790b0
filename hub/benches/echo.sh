#!/usr/bin/env bash
# The hub against tokio: hub/examples/echo_server.rs and
# hub/examples/tokio_echo_server.rs under the same load generator
# (hub/examples/echo_bench.rs, itself on the hub), 64-byte messages, side by side
# in one run. For each point (server threads x connections) each server
# runs RUNS times, alternating; prints the medians of round trips per
# second, p99 latency and the server's CPU time per round trip (user +
# system, from /proc), with every run's figures after them.
#
# One thread: server pinned to CPU 0, load generator to CPU 1. Two threads
# (SO_REUSEPORT hubs against tokio's multi_thread runtime with 2 workers,
# and against tokio arranged as the hubs are: a current_thread runtime per
# thread, each with its own SO_REUSEPORT listener, no work stealing):
# unpinned, the load generator with 2 threads too.
#
# Usage: hub/benches/echo.sh            Environment: RUNS (3), SECONDS_EACH (3)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
D=${SECONDS_EACH:-3}
cargo build --release -p corostack-hub --examples >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
B="$target_dir/release/examples"
tck=$(getconf CLK_TCK)
port=8700
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One run: prints "round-trips/s p99-us cpu-us-per-round-trip".
run() {
    local threads=$1 conns=$2 server=$3 pin_s=() pin_b=() extra=()
    case $server in
        tokio_per_thread) server=tokio_echo_server extra=(--per-thread) ;;
    esac
    if [ "$threads" = 1 ] && command -v taskset >/dev/null; then
        pin_s=(taskset -c 0) pin_b=(taskset -c 1)
    fi
    port=$((port + 1))
    "${pin_s[@]}" "$B/$server" "127.0.0.1:$port" --threads "$threads" "${extra[@]}" --for $((D + 30)) >/dev/null 2>&1 &
    local pid=$!
    sleep 0.5
    local t0 t1 out
    t0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    out=$("${pin_b[@]}" "$B/echo_bench" "127.0.0.1:$port" -c "$conns" -m 64 -d "$D" -t "$threads" | tail -1)
    t1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$out" | sed 's/.*s: \([0-9]*\) round trips\/s.*p99 \([0-9]*\) us.*/\1 \2/' |
        awk -v a="$t0" -v b="$t1" -v t="$tck" -v d="$D" '{ printf "%d %d %.2f\n", $1, $2, (b - a) / t * 1e6 / ($1 * d) }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "echo, 64-byte messages, $D s a run, medians of $RUNS runs"
echo "threads conns | server: round trips/s, p99, CPU per round trip [each run: round trips/s p99]"
for threads in 1 2; do
    servers=(echo_server tokio_echo_server)
    [ "$threads" = 1 ] || servers+=(tokio_per_thread)
    for conns in 50 1000 5000; do
        for server in "${servers[@]}"; do : >"$work/$server"; done
        for ((i = 0; i < RUNS; i++)); do
            for server in "${servers[@]}"; do
                run "$threads" "$conns" "$server" >>"$work/$server"
            done
        done
        line="$threads $conns"
        for server in "${servers[@]}"; do
            f="$work/$server"
            line="$line | $server: $(cut -d' ' -f1 "$f" | median)/s, p99 $(cut -d' ' -f2 "$f" | median) us, $(cut -d' ' -f3 "$f" | median) us CPU [$(awk '{ printf "%s %s; ", $1, $2 }' "$f")]"
        done
        echo "$line"
    done
done
