#!/usr/bin/env bash
# Folds a campaign's findings into the committed corpus: fuzz/minimise.sh TARGET
#
# Runs afl-cmin over the committed corpus/TARGET, seeds/TARGET and the
# queue of out/TARGET (left by run.sh), keeps the smallest set of inputs
# that reaches the same edges, and names each file by its content's SHA-1
# so that reruns and merges do not duplicate inputs. tests/corpus.rs
# replays corpus/TARGET in cargo test.
set -euo pipefail
cd "$(dirname "$0")"

target=${1:?usage: fuzz/minimise.sh TARGET}
queue="out/$target/default/queue"
[ -d "$queue" ] || { echo "minimise.sh: no campaign in out/$target (run.sh first)" >&2; exit 2; }

cargo afl build --release --bin "$target"
export AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/all"
for dir in "corpus/$target" "seeds/$target" "$queue"; do
    [ -d "$dir" ] || continue
    find "$dir" -maxdepth 1 -type f ! -name '.*' -exec cp -t "$work/all" {} +
done
# afl-cmin's Python version finds no edges in afl.rs's persistent-mode
# targets here (AFL++ as cargo-afl 0.18 bundles it); its Bash version,
# which cargo afl builds beside it, does.
afl_bin=$(ls -d "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-*/afl.rs-*/afl/bin | tail -n 1)
PATH="$afl_bin:$PATH" "$afl_bin/afl-cmin.bash" -i "$work/all" -o "$work/min" \
    -- "target/release/$target" >"$work/cmin.log" 2>&1 || {
    tail -20 "$work/cmin.log" >&2
    exit 1
}
rm -rf "corpus/$target"
mkdir -p "corpus/$target"
for file in "$work/min"/*; do
    cp "$file" "corpus/$target/$(sha1sum "$file" | cut -c1-16)"
done
echo "corpus/$target: $(find "corpus/$target" -type f | wc -l) inputs"
