#!/bin/bash
# Server CPU per scrape: an idle minetd with --metrics, N scrapes in a row
# (one HTTP/1.0 connection each), utime+stime before and after.
# Usage (after `cargo build --release`): benches/scrape_cost.sh [MINETD] [N]
set -eu
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
BIN=${1:-target/release/minetd}; N=${2:-20000}
$BIN --echo 127.0.0.1:0 --udp-echo 127.0.0.1:0 --metrics 127.0.0.1:0 > "$OUT" 2>/dev/null & P=$!
sleep 0.5; M=$(awk '/metrics/{print $3}' "$OUT")
cpu() { awk '{print $14+$15}' /proc/$P/stat; }
T=$(getconf CLK_TCK)
python3 - "$M" 50 <<'PY' >/dev/null
import socket,sys
h,p=sys.argv[1].rsplit(':',1)
for _ in range(int(sys.argv[2])):
    s=socket.create_connection((h,int(p))); s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    while s.recv(65536): pass
    s.close()
PY
A=$(cpu)
python3 - "$M" $N <<'PY'
import socket,sys,time
h,p=sys.argv[1].rsplit(':',1); n=int(sys.argv[2]); size=0
t=time.time()
for _ in range(n):
    s=socket.create_connection((h,int(p))); s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    while True:
        b=s.recv(65536)
        if not b: break
        size+=len(b)
    s.close()
print(f"{n} scrapes, {size//n} bytes each, {time.time()-t:.2f} s")
PY
B=$(cpu)
kill $P
python3 -c "print(f'server CPU per scrape: {($B-$A)/$T/$N*1e6:.1f} us (ticks {$B-$A} at {$T}/s)')"
