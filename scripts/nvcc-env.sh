# Sourced by scripts/test.sh and scripts/gpu-bundle.sh: exports NVCC, pointing at an nvcc found
# in NVCC, CUDA_HOME, CUDA_PATH or PATH, or else at a pinned CUDA 13.0 nvcc installed from PyPI
# into .cache/nvcc-13.0 (installed once; later runs reuse it).
fusedrop_find_nvcc() {
  if [[ -n "${NVCC:-}" ]]; then
    if [[ -x "$NVCC" ]]; then return 0; fi
    echo "== NVCC=$NVCC is not an executable file; looking elsewhere" >&2
  fi
  for root in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
    if [[ -n "$root" && -x "$root/bin/nvcc" ]]; then NVCC="$root/bin/nvcc"; return 0; fi
  done
  if command -v nvcc >/dev/null 2>&1; then NVCC="$(command -v nvcc)"; return 0; fi
  # The repository's root (this file is in scripts/), whatever the current directory.
  local cache
  cache="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache/nvcc-13.0"
  local pinned="$cache/nvidia/cu13/bin/nvcc"
  # A cache that does not run (an interrupted install) is installed again.
  if [[ ! -x "$pinned" ]] || ! "$pinned" --version >/dev/null 2>&1; then
    echo "== no nvcc found: installing the pinned CUDA 13.0 nvcc from PyPI into $cache" >&2
    local python
    python="$(command -v python3 || command -v python)" || {
      echo "nvcc-env.sh: no nvcc and no python3 to install one with pip; install python3 and pip, or set NVCC" >&2
      return 1
    }
    # Into a fresh folder first, moved into place once complete, so that an interrupted
    # install leaves nothing behind that looks installed.
    rm -rf "$cache" "$cache.partial"
    "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "$cache.partial" \
      nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-nvvm==13.0.88 \
      nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 || {
      echo "nvcc-env.sh: pip could not install the pinned nvcc (is pip installed, and PyPI reachable?)" >&2
      return 1
    }
    mv "$cache.partial" "$cache"
    "$pinned" --version >/dev/null || {
      echo "nvcc-env.sh: the installed nvcc at $pinned does not run" >&2
      return 1
    }
  fi
  NVCC="$pinned"
}
fusedrop_find_nvcc || return 1
export NVCC
