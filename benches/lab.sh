#!/usr/bin/env bash
# Off loopback: minetd's echo measured over loopback, over a veth link with
# an Ethernet MTU (the client on another host as far as TCP is concerned),
# and over the same link shaped to 100 Mbit/s by tbf, side by side: the
# three links alternate inside every round, so a change in the machine's
# load hits all three alike. Prints one Markdown table of medians.
#
# Topology (all inside network namespaces this script makes; nothing on
# the machine's own network changes):
#
#   server host (minetd, core 0)            client host (bench, core 1)
#   lo 127.0.0.1  <- loopback runs: the client runs here too
#   veth-s 198.18.0.1/24  <-- MTU 1500 -->  veth-c 198.18.0.2/24
#   [tbf 100 Mbit on veth-s egress in the "tbf" runs]
#
# Usage (root; needs unshare, nsenter, ip, tc, taskset, jq, and nft for
# "loss"; release builds):
#   cargo build --release --bins && benches/lab.sh
# Environment: LAB_SECS (5) per run, LAB_ROUNDS (3), LAB_CELLS
# ("64x100 64x1000 512x1000", SIZExCONNECTIONS as in cargo bench --bench echo),
# LAB_LINKS ("loopback veth tbf"; also "veth-gso": the link with segmentation
# offload on, 64 KiB packets crossing it as a NIC with TSO and GRO would
# pass them, so that what segmentation costs shows apart; and "loss": the
# link dropping LAB_LOSS (1) percent of the server's data packets at random
# as they reach the client, by nftables); LAB_RATE: if set, the open loop
# (bench --rate LAB_RATE) instead of the closed one.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${LAB_SECS:-5}
rounds=${LAB_ROUNDS:-3}
cells=${LAB_CELLS:-64x100 64x1000 512x1000}
links=${LAB_LINKS:-loopback veth tbf}
loss=${LAB_LOSS:-1}
rate=(${LAB_RATE:+--rate "$LAB_RATE"})
server=$PWD/target/release/minetd
client=$PWD/target/release/minetd-client

if [ -z "${MINETD_LAB_INSIDE:-}" ]; then
    for tool in unshare nsenter ip tc taskset jq; do
        command -v "$tool" >/dev/null || { echo "lab.sh: $tool is missing" >&2; exit 1; }
    done
    [ -x "$server" ] && [ -x "$client" ] || {
        echo "lab.sh: build first: cargo build --release --bins" >&2
        exit 1
    }
    # The server host: a namespace of our own, gone when we are.
    exec env MINETD_LAB_INSIDE=1 unshare --net "$0" "$@"
fi

work=$(mktemp -d)
holder=
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    [ -n "$holder" ] && kill "$holder" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip link set lo up
# The client host: a second namespace, held by a sleeping process (bounded).
unshare --net sleep 7200 &
holder=$!
for _ in $(seq 100); do
    [ "$(readlink /proc/$holder/ns/net)" != "$(readlink /proc/self/ns/net)" ] && break
    sleep 0.01
done
on_client() { nsenter --net=/proc/$holder/ns/net "$@"; }

ip link add veth-s mtu 1500 type veth peer name veth-c mtu 1500 netns "$holder"
# One segment per packet on the link, as on a NIC without offloads
# ("veth-gso" runs lift this for their own duration).
offload() {
    ip link set veth-s gso_max_size "$1" gso_max_segs "$2"
    on_client ip link set veth-c gso_max_size "$1" gso_max_segs "$2"
}
offload 1500 1
ip addr add 198.18.0.1/24 dev veth-s
on_client ip addr add 198.18.0.2/24 dev veth-c
ip link set veth-s up
on_client ip link set lo up
on_client ip link set veth-c up

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Segments the server host's TCP retransmitted (RetransSegs), so far.
retransmitted() { awk '/^Tcp:/ { n++ } /^Tcp:/ && n == 2 { print $13 }' /proc/net/snmp; }

# One run: LINK SIZE CONNECTIONS -> a line
# "link cell rps p99 cpu_us_per_rt hwm_kib retransmitted_segments".
run() {
    local link=$1 size=$2 conns=$3 host=198.18.0.1
    local -a via=(on_client)
    case $link in
        loopback) host=127.0.0.1 via=() ;;
        tbf) tc qdisc replace dev veth-s root tbf rate 100mbit burst 64kb latency 20ms ;;
        veth-gso) offload 65536 65535 ;;
        # Data packets only (over 100 bytes), as tests/netlab does.
        loss) on_client nft -f - <<EOF
table inet lab {
  chain loss {
    type filter hook prerouting priority raw; policy accept;
    iifname "veth-c" ip length > 100 numgen random mod 100 < $loss drop
  }
}
EOF
        ;;
    esac
    [ "$link" = tbf ] || tc qdisc del dev veth-s root 2>/dev/null || true
    taskset -c 0 "$server" --echo "$host:0" >"$work/listening" 2>/dev/null &
    server_pid=$!
    local addr=
    for _ in $(seq 500); do
        addr=$(awk '/^listening echo/ { print $3 }' "$work/listening")
        [ -n "$addr" ] && break
        sleep 0.01
    done
    local before after resent
    before=$(cpu_ticks "$server_pid")
    resent=$(retransmitted)
    "${via[@]}" taskset -c 1 "$client" bench "$addr" --connections "$conns" --size "$size" \
        --duration "$secs" --threads 1 "${rate[@]}" --json >"$work/json"
    after=$(cpu_ticks "$server_pid")
    resent=$(($(retransmitted) - resent))
    local hwm
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$server_pid/status")
    kill "$server_pid"
    [ "$link" = veth-gso ] && offload 1500 1
    [ "$link" = loss ] && on_client nft delete table inet lab
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    local hz
    hz=$(getconf CLK_TCK)
    jq -r --arg link "$link" --arg cell "${size}x$conns" --argjson ticks $((after - before)) \
        --argjson hz "$hz" --argjson hwm "$hwm" --argjson resent "$resent" '
        if .mismatches + .connect_failures + .errors > 0 then error("bench reported failures") else . end
        | "\($link) \($cell) \(.rps) \(.latency_us.p99) \($ticks / $hz * 1e6 / (.round_trips | if . == 0 then 1 else . end)) \($hwm) \($resent)"
    ' "$work/json"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$rounds"); do
    for cell in $cells; do
        for link in $links; do
            line=$(run "$link" "${cell%x*}" "${cell#*x}")
            echo "round $round: $line" >&2
            echo "$line" >>"$work/results"
        done
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# Medians per cell and link, one row per cell and link.
echo "| cell | link | rt/s | p99 µs | server CPU µs/rt | server peak RSS | segments resent |"
echo "|---|---|---|---|---|---|---|"
for cell in $cells; do
    for link in $links; do
        awk -v link="$link" -v cell="$cell" '$1 == link && $2 == cell' "$work/results" | jq -Rrn \
            --arg link "$link" --arg cell "$cell" '
            [inputs | split(" ") | map(tonumber? // .)] as $runs
            | def median(f): ($runs | map(f) | sort) as $v | $v[($v | length) / 2 | floor];
              def grouped: tostring | if length > 3 then (.[:-3] | grouped) + "," + .[-3:] else . end;
              def bytes: if . % 1024 == 0 then "\(. / 1024) KiB" else "\(.) B" end;
            ($cell | split("x") | map(tonumber)) as [$size, $conns]
            | "| \($size | bytes) × \($conns | grouped) | \($link) | \(median(.[2]) | round | grouped) "
              + "| \(median(.[3]) | round | grouped) | \(median(.[4]) * 100 | round / 100) "
              + "| \(median(.[5]) / 1024 * 10 | round / 10) MB | \(median(.[6]) | grouped) |"'
    done
done
