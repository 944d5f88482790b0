#!/usr/bin/env bash
# The user-space cost of one echo round trip, repeatable: each server
# (hub/examples/echo_server.rs, hub/examples/tokio_echo_server.rs; one thread) runs
# under callgrind with its cache simulation while the load generator
# (hub/examples/echo_bench.rs, natively) drives it with 64-byte messages. The
# counters are zeroed after a one-second warm-up and dumped after a timed
# window; divided by the round trips of that window they give, per round
# trip: instructions, first-level data cache misses (reads + writes) and
# misses of a simulated cache the size of this machine's L2 (reads +
# writes). The kernel's share (the system calls themselves) is not counted.
#
# With STEADY=1 the window holds no connection's setup (accepting it,
# spawning its task, mapping its stack, zeroing its buffer, which the
# default window amortizes over however many round trips it had): it opens
# inside one longer run of the load generator, once its connections are
# up, and its round trips are counted as the server's calls of libc's
# `send` in it (one per echo of a 64-byte message). Steadier at 1,000
# connections and above.
#
# Usage: hub/benches/echo_callgrind.sh [connections...]   (default: 1 1000)
# Environment: SECONDS_EACH (3), STEADY (0).
set -euo pipefail
cd "$(dirname "$0")/.."

D=${SECONDS_EACH:-3}
conns=("$@")
[ ${#conns[@]} -gt 0 ] || conns=(1 1000)

for tool in valgrind callgrind_control; do
    command -v "$tool" >/dev/null || { echo "echo_callgrind.sh: $tool is not installed (apt-get install valgrind)" >&2; exit 1; }
done

cargo build --release -p corostack-hub --example echo_server --example tokio_echo_server --example echo_bench >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
B="$target_dir/release/examples"

# The L2 cache of CPU 0 (size in bytes, ways, line), for callgrind's --LL.
l2=/sys/devices/system/cpu/cpu0/cache/index2
if [ -r "$l2/size" ]; then
    size=$(sed 's/K$//' "$l2/size")
    LL="$((size * 1024)),$(cat "$l2/ways_of_associativity"),$(cat "$l2/coherency_line_size")"
else
    LL=1048576,8,64
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=8900

# One measurement: prints the per-round-trip figures of server $1 at $2
# connections.
measure() {
    local server=$1 c=$2 vp rt out
    port=$((port + 1))
    valgrind --tool=callgrind --cache-sim=yes --LL="$LL" --callgrind-out-file="$work/cg.%p" \
        "$B/$server" "127.0.0.1:$port" --for 120 >/dev/null 2>"$work/vg.log" &
    vp=$!
    # valgrind starts slowly: wait until the server accepts.
    for _ in $(seq 100); do
        "$B/echo_bench" "127.0.0.1:$port" -c 1 -m 64 -d 0.1 -t 1 >/dev/null 2>&1 && break
        sleep 0.2
    done
    "$B/echo_bench" "127.0.0.1:$port" -c "$c" -m 64 -d 1 -t 1 >/dev/null
    local f n
    if [ "${STEADY:-0}" = 1 ]; then
        # One run of D + 9 s: its connections are up (under valgrind) well
        # within 4.5 s; the window is the D seconds after that.
        "$B/echo_bench" "127.0.0.1:$port" -c "$c" -m 64 -d "$((D + 9))" -t 1 >/dev/null &
        local bp=$!
        sleep 4.5
        callgrind_control -z "$vp" >/dev/null 2>&1
        sleep "$D"
        callgrind_control -d "$vp" >/dev/null 2>&1
        wait "$bp"
    else
        callgrind_control -z "$vp" >/dev/null 2>&1
        out=$("$B/echo_bench" "127.0.0.1:$port" -c "$c" -m 64 -d "$D" -t 1 | tail -1)
        callgrind_control -d "$vp" >/dev/null 2>&1
    fi
    kill "$vp" 2>/dev/null || true
    wait "$vp" 2>/dev/null || true
    # The dump made after zeroing: the newest file with a part number.
    f=$(ls -t "$work"/cg.*.* | head -1)
    if [ "${STEADY:-0}" = 1 ]; then
        # The calls of `send` recorded in the dump: a function's name is
        # given once, with its number ("cfn=(12) send"), then by the
        # number alone; a "calls=" line follows each call site's "cfn=".
        n=$(awk '
            match($0, /^c?fn=\([0-9]+\)/) {
                id = substr($0, 1, RLENGTH); sub(/^c/, "", id)
                name = substr($0, RLENGTH + 2)
                if (name != "") names[id] = name
                callee = (substr($0, 1, 1) == "c") ? names[id] : ""
                next
            }
            /^calls=/ && (callee == "send" || callee == "__send" || callee == "__libc_send") {
                split(substr($0, 7), a, " "); sends += a[1]
            }
            END { print sends + 0 }' "$f")
    else
        rt=$(echo "$out" | sed 's/.*s: \([0-9]*\) round trips\/s.*/\1/')
        n=$((rt * D))
    fi
    # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
    sed -n 's/^summary: *//p; s/^totals: *//p' "$f" | head -1 |
        awk -v n="$n" -v s="$server" -v c="$c" '{
            printf "%-18s %5d conns: %7.0f instructions, %5.1f L1d misses, %5.1f L2 misses per round trip\n",
                s, c, $1 / n, ($5 + $6) / n, ($8 + $9) / n }'
    rm -f "$work"/cg.*
}

echo "user-space cost per echo round trip under callgrind (simulated L2: $LL), ${D} s windows$([ "${STEADY:-0}" = 1 ] && echo ', steady (no connection setup)')"
for c in "${conns[@]}"; do
    for server in echo_server tokio_echo_server; do
        measure "$server" "$c"
    done
done
