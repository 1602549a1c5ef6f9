#!/usr/bin/env bash
# The test command: every check that runs without a GPU, with the CUDA kernels compiled by a
# real nvcc. Works on a fresh clone on a machine with no GPU and no CUDA: when no nvcc is found
# it installs a pinned CUDA 13.0 nvcc from PyPI into .cache/ (about 100 MB, once).
#
#   scripts/test.sh            # everything
#   FUSEDROP_SKIP_SANITIZER=1 scripts/test.sh   # skip the AddressSanitizer pass (faster)
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/nvcc-env.sh
export FUSEDROP_REQUIRE_NVCC=1

echo "== nvcc: $NVCC"
"$NVCC" --version | tail -n 2

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo doc (missing docs and broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== cargo test --release --workspace"
cargo test --release --workspace

if [[ "${FUSEDROP_SKIP_SANITIZER:-0}" != "1" ]]; then
  echo "== kernels on the CPU under AddressSanitizer"
  FUSEDROP_HARNESS_SANITIZE=address cargo test --release -p fusedrop --test kernels_on_cpu
fi

echo "== benches compile"
cargo bench --workspace --no-run --quiet

echo "== scripts/test.sh: all checks passed"
