#!/usr/bin/env bash
# The test command: every check that runs without a GPU, with the CUDA kernels compiled by a
# real nvcc. Works on a fresh clone on a machine with no GPU and no CUDA: when no nvcc is found
# it installs a pinned CUDA 13.0 nvcc from PyPI into .cache/ (about 100 MB, once).
#
#   scripts/test.sh            # everything
#   FUSEDROP_SKIP_SANITIZER=1 scripts/test.sh   # skip the ASan + UBSan pass (faster)
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/nvcc-env.sh
export FUSEDROP_REQUIRE_NVCC=1
# The kernels are compiled once, then taken from here by every later build that asks for the same
# ones under another profile, feature set or target directory (build.rs, build/nvcc_cache.rs).
export FUSEDROP_NVCC_CACHE="${FUSEDROP_NVCC_CACHE:-$PWD/.cache/nvcc-outputs}"

# Each step's header says how long the script has run, so a slow step shows in CI's log.
step() {
  printf '== %s [%dm%02ds]\n' "$1" $((SECONDS / 60)) $((SECONDS % 60))
}

step "nvcc: $NVCC"
"$NVCC" --version | tail -n 2

step "cargo fmt --check"
cargo fmt --all -- --check

# The candle feature (src/candle.rs, tests/candle_op.rs, examples/candle_mlp.rs) is on for
# everything but the first clippy pass, which checks the default build; one feature set for the
# release steps means one release build of the kernels and of candle.
with_candle=(--features fusedrop/candle)

step "scripts/check-gpu-check.sh (the GPU check's own logic, on fake test executables)"
scripts/check-gpu-check.sh

step "cargo clippy --workspace --all-targets -- -D warnings (default features, then with candle)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets "${with_candle[@]}" -- -D warnings

step "cargo doc (missing docs and broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet "${with_candle[@]}"

step "cargo test --release --workspace (with candle)"
cargo test --release --workspace "${with_candle[@]}"

if [[ "${FUSEDROP_SKIP_SANITIZER:-0}" != "1" ]]; then
  # Every test but the bf16 twins of f16 tests: a twin runs the same kernel code with the same
  # 2-byte element and the same indices, and the plain run above has checked its values; bf16
  # conversions still run under the sanitizers in the tests that mix types (plans, workspaces,
  # dropout, the one launch). The twins would cost a third of this step, the longest of CI.
  step "kernels on the CPU under AddressSanitizer and UndefinedBehaviorSanitizer (not the bf16 twins)"
  FUSEDROP_HARNESS_SANITIZE=address cargo test --release --workspace "${with_candle[@]}" --test kernels_on_cpu \
    -- --skip _bf16_
fi

step "kernels on the CPU switching threads with swapcontext (the form off x86-64), a few tests"
FUSEDROP_HARNESS_SWITCH=ucontext cargo test --release --workspace "${with_candle[@]}" --test kernels_on_cpu \
  -- forward_sm90_split harness_rejects_misuse

step "the crate without nvcc (debug, overflow checks on): it builds, and opening a GPU says the kernels were not built"
# Every other step builds the kernels (FUSEDROP_REQUIRE_NVCC=1). Here no nvcc can be found: NVCC,
# CUDA_HOME and CUDA_PATH unset, and each PATH entry holding an nvcc replaced by a folder of links
# to everything else in it (so that a system nvcc in /usr/bin does not take cargo and cc along).
shadow="$(mktemp -d)"
trap 'rm -rf "$shadow"' EXIT
no_nvcc_path=""
shadowed=0
IFS=: read -ra path_dirs <<<"$PATH"
for dir in "${path_dirs[@]}"; do
  if [[ -x "$dir/nvcc" ]]; then
    shadowed=$((shadowed + 1))
    copy="$shadow/$shadowed"
    mkdir "$copy"
    for entry in "$dir"/*; do
      [[ "${entry##*/}" == nvcc ]] || ln -s "$entry" "$copy/"
    done
    dir="$copy"
  fi
  no_nvcc_path+="$dir:"
done
no_nvcc_log="$(env -u NVCC -u CUDA_HOME -u CUDA_PATH -u FUSEDROP_REQUIRE_NVCC PATH="${no_nvcc_path%:}" \
  CARGO_TARGET_DIR=target/no-nvcc cargo test -p fusedrop --lib --test no_driver --test validation \
  --test reference -- --nocapture 2>&1)" || { echo "$no_nvcc_log"; exit 1; }
grep -E "no nvcc found|kernels not built|test result" <<<"$no_nvcc_log"
grep -q "kernels not built: open_device(0) returned" <<<"$no_nvcc_log"

step "benches compile"
cargo bench --workspace --no-run --quiet "${with_candle[@]}"

step "fusedrop beside candle's CUDA backend (tests/compose): one linking mode, nvcc's CUDA version"
# The application crate in tests/compose depends on fusedrop (default features off, candle-cuda
# on) and on candle-core with its CUDA backend. cudarc must end up linking libcuda (candle's
# choice) without fusedrop's run-time loading or fixed CUDA 13.0 symbol set, and its build script
# (which panics on a conflicting set) must accept the unified features.
compose_features="$(cargo tree --manifest-path tests/compose/Cargo.toml -e features -i cudarc \
  --prefix none --no-dedupe | grep -o 'cudarc feature "[^"]*"' | sort -u)"
echo "$compose_features"
grep -q '"dynamic-linking"' <<<"$compose_features"
grep -q '"cuda-version-from-build-system"' <<<"$compose_features"
if grep -qE '"dynamic-loading"|"cuda-13000"' <<<"$compose_features"; then
  echo "cudarc gets fusedrop's default linking mode or CUDA version beside candle" >&2
  exit 1
fi
PATH="$(dirname "$NVCC"):$PATH" CARGO_TARGET_DIR=target/compose \
  cargo check --manifest-path tests/compose/Cargo.toml -p cudarc --quiet

step "cargo clippy with candle's CUDA backend (feature candle-cuda): type-checked, not linked"
# src/candle.rs's CUDA path and tests/candle_cuda.rs exist only with this feature, under which
# cudarc links libcuda at build time. This machine has none to link against (scripts/gpu-bundle.sh
# links a stub for the GPU check), so they are type-checked and linted here, not linked or run.
# candle-kernels compiles its PTX with the same nvcc.
PATH="$(dirname "$NVCC"):$PATH" CUDA_COMPUTE_CAP=90 CARGO_TARGET_DIR=target/candle-cuda \
  cargo clippy --workspace --no-default-features --features fusedrop/candle-cuda --all-targets \
  --quiet -- -D warnings

if [[ "${FUSEDROP_SKIP_SANITIZER:-0}" == "1" ]]; then
  step "scripts/test.sh: all checks passed but the sanitizer pass (FUSEDROP_SKIP_SANITIZER=1)"
else
  step "scripts/test.sh: all checks passed"
fi
