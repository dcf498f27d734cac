#!/usr/bin/env bash
# A --reuse-port group of N processes against one process, under the same
# closed-loop load: server CPU per round trip (utime+stime of every member
# over the run, from /proc) and round trips per second. Both set-ups run on
# core 0 with the client on core 1, so the comparison is the cost a group
# adds per message, not extra cores (this machine has two).
#
#   cargo build --release && benches/group.sh [N] [CONNECTIONS] [SIZE] [SECS]
#
# RATE=R makes the load an open loop of R messages a second (--rate)
# instead of a closed one. Below saturation each message wakes its server
# once whether the group has one member or two, so the members' time-
# slicing on the shared core no longer decides the figure.
set -euo pipefail
cd "$(dirname "$0")/.."
members=${1:-2}
connections=${2:-1000}
size=${3:-64}
secs=${4:-5}
bin=target/release
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ticks=$(getconf CLK_TCK)

cpu_of() { # pid -> utime+stime in ticks
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

run() { # number of processes -> "rt/s cpu_us_per_rt"
    local n=$1 pids=() before=0 after=0 pid out rt
    for _ in $(seq "$n"); do
        taskset -c 0 "$bin/minetd" --echo "127.0.0.1:$port" --reuse-port \
            --max-connections 20000 --idle-timeout 0 >/dev/null 2>&1 &
        pids+=($!)
    done
    sleep 0.5
    for pid in "${pids[@]}"; do before=$((before + $(cpu_of "$pid"))); done
    out=$(taskset -c 1 "$bin/minetd-client" bench "127.0.0.1:$port" --connections "$connections" \
        --size "$size" --duration "$secs" --threads 1 ${RATE:+--rate "$RATE"} --json)
    for pid in "${pids[@]}"; do after=$((after + $(cpu_of "$pid"))); done
    kill "${pids[@]}"
    wait "${pids[@]}" 2>/dev/null || true
    rt=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["mismatches"]==0 and r["errors"]==0; print(r["round_trips"], r["rps"])' "$out")
    python3 -c 'import sys; rt,rps=sys.argv[1].split(); cpu=int(sys.argv[2])/int(sys.argv[3]); print(f"{float(rps):.0f} {cpu*1e6/int(rt):.2f}")' "$rt" "$((after - before))" "$ticks"
}

printf 'processes  rt/s      server CPU us/rt   (%s connections, %s B, %s s)\n' "$connections" "$size" "$secs"
for round in 1 2 3; do
    read -r rps1 cpu1 < <(run 1)
    read -r rpsn cpun < <(run "$members")
    printf '1          %-9s %s\n%-10s %-9s %s\n' "$rps1" "$cpu1" "$members" "$rpsn" "$cpun"
    python3 -c 'import sys; print(f"  ratio {sys.argv[3]}/1: rt/s {float(sys.argv[2])/float(sys.argv[1]):.3f}, CPU/rt {float(sys.argv[5])/float(sys.argv[4]):.3f}")' "$rps1" "$rpsn" "$members" "$cpu1" "$cpun"
done
