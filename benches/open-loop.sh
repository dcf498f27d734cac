#!/usr/bin/env bash
# benches/open-loop.sh: can the open loop (--rate) keep its schedule at rates
# the closed loop reaches, and what does --pipeline buy?
#
# Against one release minetd (pinned to CPU 0; the client to CPU 1, each
# run a separate process), for 100 and 10,000 connections of 64 bytes:
# a closed-loop run, then --rate at 50% and at 90% of the rps it reached,
# repeated PAIRS times; prints achieved / target for each, with the
# client's CPU share in each run (near 100% = the client is the limit;
# well under it while short of the target = the server or the machine is,
# not the client). Then 100
# connections with --pipeline 1 and 16, alternated, with the server's CPU
# time (utime + stime from /proc/PID/stat) per message.
#
# Settings: SECS (5) per run, PAIRS (3), BIN (target/release).
# Build first: cargo build --release --bins
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-5}
PAIRS=${PAIRS:-3}
BIN=${BIN:-target/release}
TICKS=$(getconf CLK_TCK)

taskset -c 0 "$BIN/minetd" --echo 127.0.0.1:0 --max-connections 20000 \
    --idle-timeout 0 > >(head -n1 > /tmp/open-loop.$$.port) 2>/dev/null &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -f /tmp/open-loop.$$.*' EXIT
for _ in $(seq 50); do [ -s /tmp/open-loop.$$.port ] && break; sleep 0.1; done
ADDR=$(awk '{print $3}' /tmp/open-loop.$$.port)

# bench ARGS... -> its JSON report; its CPU share (user + system over wall
# time, ramp included) goes to /tmp/open-loop.$$.cpu
bench() {
    local times
    times=$( { TIMEFORMAT='%R %U %S'; time taskset -c 1 "$BIN/minetd-client" bench "$ADDR" \
        --size 64 --threads 1 --duration "$SECS" --json "$@" 2>/dev/null \
        >/tmp/open-loop.$$.out || true; } 2>&1)
    awk '{printf "%.0f%%", 100 * ($2 + $3) / $1}' <<<"$times" >/tmp/open-loop.$$.cpu
    cat /tmp/open-loop.$$.out
}
# field NAME < JSON -> the top-level number NAME
field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/"; }
# server_cpu -> utime + stime of the server, in clock ticks
server_cpu() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }

echo "open loop against the closed loop: minetd on CPU 0, client on CPU 1, $SECS s runs"
printf '%11s %6s %11s %8s %10s %10s %7s %10s %8s\n' connections share closed_rps cpu \
    target achieved ratio p99_us cpu
for conns in 100 10000; do
    for _ in $(seq "$PAIRS"); do
        closed=$(bench --connections "$conns" | field rps)
        closed_cpu=$(cat /tmp/open-loop.$$.cpu)
        for share in 0.5 0.9; do
            target=$(awk -v c="$closed" -v s="$share" 'BEGIN {printf "%.0f", c * s}')
            report=$(bench --connections "$conns" --rate "$target")
            achieved=$(field rps <<<"$report")
            p99=$(sed -E 's/.*"latency_us":\{[^}]*"p99":([0-9.]+).*/\1/' <<<"$report")
            printf '%11s %6s %11s %8s %10s %10s %7s %10s %8s\n' "$conns" "$share" "$closed" \
                "$closed_cpu" "$target" "$achieved" \
                "$(awk -v a="$achieved" -v t="$target" 'BEGIN {printf "%.3f", a / t}')" "$p99" \
                "$(cat /tmp/open-loop.$$.cpu)"
        done
    done
done

echo
echo "pipelining: 100 connections, 64 bytes, closed loop"
printf '%9s %12s %12s %18s\n' pipeline round_trips rps server_cpu_us/msg
for _ in $(seq "$PAIRS"); do
    for k in 1 16; do
        before=$(server_cpu)
        report=$(bench --connections 100 --pipeline "$k")
        after=$(server_cpu)
        trips=$(field round_trips <<<"$report")
        printf '%9s %12s %12s %18s\n' "$k" "$trips" "$(field rps <<<"$report")" \
            "$(awk -v d="$((after - before))" -v n="$trips" -v t="$TICKS" \
                'BEGIN {printf "%.3f", d / t * 1e6 / n}')"
    done
done
