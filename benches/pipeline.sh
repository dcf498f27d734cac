#!/usr/bin/env bash
# benches/pipeline.sh: what does --pipeline buy?
#
# Against one release minetd (pinned to CPU 0; the client to CPU 1, each
# run a separate process): 100 connections of 64 bytes with --pipeline 1
# and 16, alternated PAIRS times, with the server's CPU time (utime +
# stime from /proc/PID/stat) per message. (Whether --rate keeps its
# schedule is `cargo bench --bench open_loop`.)
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
    --idle-timeout 0 > >(head -n1 > /tmp/pipeline.$$.port) 2>/dev/null &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -f /tmp/pipeline.$$.*' EXIT
for _ in $(seq 50); do [ -s /tmp/pipeline.$$.port ] && break; sleep 0.1; done
ADDR=$(awk '{print $3}' /tmp/pipeline.$$.port)

# bench ARGS... -> its JSON report
bench() {
    taskset -c 1 "$BIN/minetd-client" bench "$ADDR" --size 64 --threads 1 \
        --duration "$SECS" --json "$@" 2>/dev/null || true
}
# field NAME < JSON -> the top-level number NAME
field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/"; }
# server_cpu -> utime + stime of the server, in clock ticks
server_cpu() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }

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
