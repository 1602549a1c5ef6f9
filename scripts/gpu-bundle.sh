#!/usr/bin/env bash
# Builds, on a CPU machine, everything the GPU check needs into one folder (default .bundle/):
# the GPU test executables, the fusedrop binary (selftest, bench), the PyTorch peer script, the
# cuRAND cross-check source with the headers it includes, and scripts/gpu-check.sh, which runs
# it all on a GPU host that has no Rust toolchain:
#
#   scripts/gpu-bundle.sh            # here (FUSEDROP_BUNDLE_CANDLE=1: tests/candle_cuda.rs too)
#   bash .bundle/gpu-check.sh        # there ($OUT, when set, receives the logs and CSVs); the
#                                    # device tool carries .bundle.tar.xz (see the end)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/nvcc-env.sh
export FUSEDROP_REQUIRE_NVCC=1
# The kernels compile once for both builds below (the plain one and candle-cuda's), and not again
# in a later bundle of the same kernels (build.rs, FUSEDROP_NVCC_CACHE; as scripts/test.sh).
export FUSEDROP_NVCC_CACHE="${FUSEDROP_NVCC_CACHE:-$PWD/.cache/nvcc-outputs}"
bundle="${1:-.bundle}"

# Reads cargo's --message-format=json on stdin; prints "name executable" for each test executable,
# and each compiler error, rendered, on stderr (the JSON would hide it).
test_executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-message" and msg["message"].get("level") == "error":
        print(msg["message"].get("rendered") or msg["message"].get("message"), file=sys.stderr)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
        print(msg["target"]["name"], msg["executable"])
'
}

rm -rf "$bundle"
mkdir -p "$bundle/tests" "$bundle/kernels" "$bundle/peers"

echo "== building release test executables"
cargo test --release --workspace --no-run --message-format=json \
  | test_executables > "$bundle/tests.txt"
while read -r name exe; do
  case "$name" in
    gpu_*|no_driver) cp "$exe" "$bundle/tests/$name" ;;
  esac
done < "$bundle/tests.txt"
rm "$bundle/tests.txt"

# The candle op on CUDA tensors (tests/candle_cuda.rs) needs the feature candle-cuda, which
# links libcuda, cuBLAS, cuRAND, NVRTC and the CUDA runtime at build time. With
# FUSEDROP_BUNDLE_CANDLE=1 they come from NVIDIA's CUDA 13.0 wheels on PyPI (about 600 MB, once,
# into .cache/cuda-link/), libcuda as a stub holding cudarc's driver symbols (the GPU host's
# driver is the real one; the stub is only linked against, never bundled). The GPU host must have
# the CUDA 13 runtime, cuBLAS, cuRAND and NVRTC libraries on its loader path: gpu-check.sh adds
# only the first folder it finds holding libcublasLt (a CUDA toolkit's lib64, or PyTorch's
# nvidia/cublas/lib), which on a CUDA 12 host or through PyTorch may not hold the others; the
# candle_cuda step then fails to load, saying which library is missing.
if [[ "${FUSEDROP_BUNDLE_CANDLE:-0}" == "1" ]]; then
  echo "== building tests/candle_cuda.rs (feature candle-cuda)"
  link="$PWD/.cache/cuda-link"
  if [[ ! -f "$link/lib/libcuda.so" ]]; then
    mkdir -p "$link/lib"
    python3 -m pip download --no-deps -q -d "$link/wheels" "nvidia-cublas<13.1" \
      "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-curand==10.4.0.*"
    python3 - "$link" <<'PY'
import glob, os, sys, zipfile
link = sys.argv[1]
for wheel in glob.glob(os.path.join(link, "wheels", "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if "/lib/lib" in name and ".so." in name:
                z.extract(name, os.path.join(link, "x"))
for so in glob.glob(os.path.join(link, "x", "**", "lib*.so.*"), recursive=True):
    stem = os.path.basename(so).split(".so.")[0]
    target = os.path.join(link, "lib", stem + ".so")
    if not os.path.exists(target):
        os.symlink(so, target)
PY
    cudarc="$(cargo metadata --format-version 1 | python3 -c '
import json, sys
print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')"
    grep -hoE "^\s+fn cu[A-Za-z0-9_]+\(" "$(dirname "$cudarc")/src/driver/sys/mod.rs" \
      | sed -E 's/^\s+fn //; s/\($//' | sort -u | awk '{print "void " $1 "(void) {}"}' > "$link/cuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/lib/libcuda.so" "$link/cuda_stub.c"
  fi
  candle_exe="$(PATH="$(dirname "$NVCC"):$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" \
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/candle-cuda" RUSTFLAGS="-L $link/lib" \
    cargo test --release -p fusedrop --no-default-features --features candle-cuda \
      --test candle_cuda --no-run --message-format=json \
    | test_executables | awk '$1 == "candle_cuda" { print $2 }')"
  if [[ -z "$candle_exe" ]]; then
    echo "gpu-bundle: the candle_cuda test executable was not built (see the messages above)" >&2
    exit 1
  fi
  cp "$candle_exe" "$bundle/tests/candle_cuda"
fi

echo "== building the fusedrop binary"
cargo build --release --bin fusedrop --quiet
cp "${CARGO_TARGET_DIR:-target}/release/fusedrop" "$bundle/fusedrop"
strip "$bundle"/fusedrop "$bundle"/tests/* 2>/dev/null || true

cp kernels/*.cuh "$bundle/kernels/"
cp scripts/gpu/curand_check.cu "$bundle/"
cp scripts/gpu-check.sh "$bundle/gpu-check.sh"
cp tools/benches/peers/*.py "$bundle/peers/"
# What the bundle was built from, and the settings that change its kernels (gpu-check.sh prints
# this file at the top of card.txt).
{
  git rev-parse HEAD 2>/dev/null || echo unknown
  if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then echo "(with uncommitted changes)"; fi
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) with $("$NVCC" --version | tail -n 1)"
  echo "FUSEDROP_CUDA_ARCHS=${FUSEDROP_CUDA_ARCHS:-default} FUSEDROP_MBARRIER_WAIT_LIMIT_NS=${FUSEDROP_MBARRIER_WAIT_LIMIT_NS:-default} FUSEDROP_BUNDLE_CANDLE=${FUSEDROP_BUNDLE_CANDLE:-0}"
} > "$bundle/COMMIT"
du -sh "$bundle"
ls -la "$bundle" "$bundle/tests"

# The device tool carries at most 64 MiB of ignored paths, less than the bundle (each test
# executable embeds the same fatbins). A dictionary larger than the whole tar compresses the
# copies away (about 20 MB in all). On the device, unpack with Python, which the host has:
#   python3 -c "import tarfile; tarfile.open('.bundle.tar.xz').extractall('.bundle')"
echo "== compressing into $bundle.tar.xz"
tar -C "$bundle" -cf - . | xz -T1 --lzma2=preset=6,dict=256MiB > "$bundle.tar.xz"
ls -la "$bundle.tar.xz"
