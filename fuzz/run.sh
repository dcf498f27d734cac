#!/usr/bin/env bash
# Runs one afl.rs campaign: fuzz/run.sh TARGET SECS
#
# TARGET is proxy, escape, addr or args. Builds the targets instrumented
# (cargo afl build --release), fuzzes TARGET for SECS seconds from
# seeds/TARGET with dict/TARGET.dict into out/TARGET, and prints the
# figures afl-fuzz leaves in out/TARGET/default/fuzzer_stats. Findings land
# in out/TARGET/default/crashes and hangs. Needs cargo-afl
# (cargo install cargo-afl; cargo afl config --build). The CI never runs
# this: only the committed corpus runs, in cargo test (tests/corpus.rs).
set -euo pipefail
cd "$(dirname "$0")"

target=${1:?usage: fuzz/run.sh TARGET SECS}
secs=${2:?usage: fuzz/run.sh TARGET SECS}
case "$target" in
    proxy | escape | addr | args) ;;
    *) echo "run.sh: unknown target '$target' (proxy, escape, addr, args)" >&2; exit 2 ;;
esac

cargo afl build --release --bin "$target"

# A shared machine: no CPU governor or core dump settings to insist on, no
# core to claim for ourselves, and no screen to draw.
export AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
export AFL_SKIP_BIN_CHECK=${AFL_SKIP_BIN_CHECK:-}
out="out/$target"
mkdir -p "$out"
# Resume an earlier campaign rather than refuse its output directory.
if [ -d "$out/default/queue" ]; then
    input=-
else
    input="seeds/$target"
fi
dict=()
[ -f "dict/$target.dict" ] && dict=(-x "dict/$target.dict")
cargo afl fuzz -i "$input" -o "$out" "${dict[@]}" -V "$secs" \
    "target/release/$target" >"$out/fuzz.log" 2>&1 || {
    tail -20 "$out/fuzz.log" >&2
    exit 1
}

stats="$out/default/fuzzer_stats"
field() { awk -F' *: *' -v key="$1" '$1 == key { print $2 }' "$stats"; }
echo "target $target: $(field run_time) s, $(field execs_done) execs," \
    "$(field execs_per_sec) execs/s, corpus $(field corpus_count)" \
    "(paths found $(field corpus_found)), crashes $(field saved_crashes)," \
    "hangs $(field saved_hangs), edges $(field edges_found) of $(field total_edges)"
