# Sourced by scripts/test.sh and scripts/gpu-bundle.sh: exports NVCC, pointing at an nvcc found
# in NVCC, CUDA_HOME, CUDA_PATH or PATH, or else at a pinned CUDA 13.0 nvcc installed from PyPI
# into .cache/nvcc-13.0 (installed once; later runs reuse it).
fusedrop_find_nvcc() {
  if [[ -n "${NVCC:-}" && -x "$NVCC" ]]; then return 0; fi
  for root in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
    if [[ -n "$root" && -x "$root/bin/nvcc" ]]; then NVCC="$root/bin/nvcc"; return 0; fi
  done
  if command -v nvcc >/dev/null 2>&1; then NVCC="$(command -v nvcc)"; return 0; fi
  local cache="$PWD/.cache/nvcc-13.0"
  local pinned="$cache/nvidia/cu13/bin/nvcc"
  if [[ ! -x "$pinned" ]]; then
    echo "== no nvcc found: installing the pinned CUDA 13.0 nvcc from PyPI into $cache" >&2
    local python
    python="$(command -v python3 || command -v python)"
    "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "$cache" \
      nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-nvvm==13.0.88 \
      nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
  fi
  NVCC="$pinned"
}
fusedrop_find_nvcc
export NVCC
