#!/usr/bin/env bash
# Builds, on a CPU machine, everything the GPU check needs into one folder (default .bundle/):
# the GPU test executables, the fusedrop binary (selftest, bench), the PyTorch peer script, the
# cuRAND cross-check source with the headers it includes, and scripts/gpu-check.sh, which runs
# it all on a GPU host that has no Rust toolchain:
#
#   scripts/gpu-bundle.sh            # here
#   bash .bundle/gpu-check.sh        # there ($OUT, when set, receives the logs and CSVs)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/nvcc-env.sh
export FUSEDROP_REQUIRE_NVCC=1
bundle="${1:-.bundle}"
rm -rf "$bundle"
mkdir -p "$bundle/tests" "$bundle/kernels" "$bundle/peers"

echo "== building release test executables"
cargo test --release --workspace --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
        print(msg["target"]["name"], msg["executable"])
' > "$bundle/tests.txt"
while read -r name exe; do
  case "$name" in
    gpu_*|no_driver) cp "$exe" "$bundle/tests/$name" ;;
  esac
done < "$bundle/tests.txt"
rm "$bundle/tests.txt"

echo "== building the fusedrop binary"
cargo build --release --bin fusedrop --quiet
cp "${CARGO_TARGET_DIR:-target}/release/fusedrop" "$bundle/fusedrop"
strip "$bundle"/fusedrop "$bundle"/tests/* 2>/dev/null || true

cp kernels/*.cuh "$bundle/kernels/"
cp scripts/gpu/curand_check.cu "$bundle/"
cp scripts/gpu-check.sh "$bundle/gpu-check.sh"
if [[ -d tools/benches/peers ]]; then cp tools/benches/peers/*.py "$bundle/peers/" 2>/dev/null || true; fi
git rev-parse HEAD > "$bundle/COMMIT" 2>/dev/null || echo unknown > "$bundle/COMMIT"
git status --porcelain | grep -q . && echo "(with uncommitted changes)" >> "$bundle/COMMIT"
du -sh "$bundle"
ls -la "$bundle" "$bundle/tests"
