#!/usr/bin/env bash
# Runs every libFuzzer target of kvroute-core for SECONDS each (make test: a few; make fuzz: minutes).
#   bash rust/fuzz/run.sh SECONDS [--merge]
# Each run starts by replaying the committed inputs: rust/fuzz/seeds/<target>/ (written by hand,
# and every crasher once fixed) and rust/fuzz/corpus/<target>/ (what earlier runs found, minimised).
# That replay is the regression test. New inputs go to a scratch directory, so a short run never
# changes the tree; --merge (make fuzz) rewrites the corpus as the smallest set of inputs that
# covers every edge reached so far. A crash stops the run with the input under
# rust/fuzz/artifacts/<target>/.
set -euo pipefail
seconds=${1:?usage: run.sh SECONDS [--merge]}
merge=${2:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

# cargo-fuzz drives libFuzzer, which needs nightly-only compiler flags; the toolchain here is
# stable, and RUSTC_BOOTSTRAP lets it accept them for this build only.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz@0.13.2

# kvroute-core has no unsafe code: AddressSanitizer would only slow the search down. Overflow
# checks stay on (cargo fuzz builds with debug assertions).
fuzz=(cargo fuzz run --fuzz-dir rust/fuzz --sanitizer none)
cargo fuzz build --fuzz-dir rust/fuzz --sanitizer none
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list --fuzz-dir rust/fuzz); do
    seeds=rust/fuzz/seeds/$target corpus=rust/fuzz/corpus/$target found=$scratch/$target
    mkdir -p "$seeds" "$corpus" "$found"
    echo "fuzz: $target for ${seconds}s (replaying $(ls "$seeds" | wc -l) seeds, $(ls "$corpus" | wc -l) corpus inputs)"
    "${fuzz[@]}" "$target" "$found" "$corpus" "$seeds" -- \
        -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
        -dict=rust/fuzz/json.dict 2>"$found.log" \
        || { tail -n 60 "$found.log"; echo "fuzz: $target FAILED (input in rust/fuzz/artifacts/$target/)"; exit 1; }
    grep -E '^stat::number_of_executed_units' "$found.log" | sed "s/^/fuzz: $target /"
    if [[ $merge == --merge ]]; then
        # Edges only (no hit counts): keeps the committed corpus at a few hundred inputs.
        cp -r "$seeds" "$scratch/$target.min"
        "${fuzz[@]}" "$target" "$scratch/$target.min" "$corpus" "$found" -- \
            -set_cover_merge=1 -use_counters=0 -max_len=8192 2>>"$found.log"
        (cd "$seeds" && rm -f $(ls | sed "s|^|$scratch/$target.min/|"))
        rm -rf "$corpus" && mv "$scratch/$target.min" "$corpus"
        echo "fuzz: $target corpus now $(ls "$corpus" | wc -l) inputs, $(cat "$corpus"/* /dev/null | wc -c) bytes"
    fi
done
echo "fuzz: all targets passed"
