#!/usr/bin/env bash
# Runs every GPU check of a bundle made by scripts/gpu-bundle.sh, on a GPU host with the NVIDIA
# driver and a CUDA toolkit but no Rust. Each step is bounded in time and the script carries on
# past a step that fails; the summary comes last, and the exit status is 1 if any step failed.
# Logs go to $OUT (or gpu-check-out/ beside this script); the summary is written to
# $OUT/summary.txt line by line as steps finish, so a run cut off by its lease still says what
# passed. A name in STEPS that no step of this run has (a typo, a step QUICK=1 or a missing tool
# left out) is reported NOT RUN and fails the check. A test executable that fails has each of its tests that
# did not report ok run again alone (rerun_alone, below), so one trapped kernel cannot hide which
# tests pass.
#   QUICK=1 bash gpu-check.sh      # correctness only: skips the bench, sweeps, ncu and the peer
#   DEADLINE=0 bash gpu-check.sh   # no deadline (the default, 570 s, fits one call of the device
#                                  # tool, whose limit is 600 s: each step's limit is cut to what
#                                  # is left of it, less 10 s for the summary, and a step with
#                                  # under 5 s left is reported NOT RUN instead of being started)
#   STEPS="test-gpu_forward test-gpu_graph bench" bash gpu-check.sh
#                                  # only the named steps (names as in the summary), to fit a
#                                  # short lease: the whole check takes longer than 10 minutes;
#                                  # selftest-no-hopper, bench-no-hopper, bench-full and
#                                  # torch-peer-full run only when named
# Reading a failure: a Hopper kernel whose pipeline barrier never completes traps after 20 s
# (kernels/ptx.cuh), so a step that reports an illegal instruction from one is most likely a
# hang, not a bad access (the kernel cannot say which barrier: docs/KERNELS.md; the kernels are
# built with -lineinfo, so running that one test under cuda-gdb or compute-sanitizer may name the
# block, the thread and the source line of the wait; not yet tried on these kernels; the 20 s
# are wall-clock time, so under a sanitizer's or a debugger's slowdown a wait that would
# complete can trap too: a bundle built with FUSEDROP_MBARRIER_WAIT_LIMIT_NS=0 tells them apart);
# a wrong value or mask is reported with where it lies (rows, columns,
# positions within 64 x 64 blocks, the first few elements), which is usually enough to find the
# fault on the CPU harness afterwards.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/gpu-check-out}"
mkdir -p "$out"
# What an earlier run left in $out must not pass for this run's (goals reads the CSVs).
rm -f "$out"/{bench,bench-full,bench-no-hopper,torch_peer,torch_peer-full}.csv "$out/goals.txt"
: > "$out/summary.txt"
failed_steps=0
steps_here=" "
deadline="${DEADLINE:-570}"
# Seconds left before the deadline for one more command, the summary's 10 s set aside (a large
# number without a deadline).
seconds_left() { if ((deadline > 0)); then echo $((deadline - SECONDS - 10)); else echo 86400; fi; }
record() { printf '%-34s %s\n' "$1" "$2" >> "$out/summary.txt"; }
step() { # step NAME SECONDS COMMAND...: runs, logs to $out/NAME.log, records pass/fail
  local name="$1" limit="$2"; shift 2
  steps_here+="$name "
  if [[ -n "${STEPS:-}" && " $STEPS " != *" $name "* ]]; then
    return 0
  fi
  local left
  left="$(seconds_left)"
  if ((left < 5)); then
    record "$name" "NOT RUN: DEADLINE=${deadline}s reached"
    failed_steps=$((failed_steps + 1))
    return 0
  fi
  ((limit > left)) && limit=$left
  local start=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  local verdict="PASS"
  [[ $rc -eq 0 ]] || verdict="FAIL (exit $rc)"
  [[ $rc -eq 124 ]] && verdict="TIMEOUT after ${limit}s"
  [[ $rc -eq 137 ]] && verdict="KILLED (exit 137: the time limit's kill, or out of memory)"
  record "$name" "$verdict  [$((SECONDS - start))s]"
  ((rc == 0)) || failed_steps=$((failed_steps + 1))
  return $rc
}
# optional_step NAME SECONDS COMMAND...: a step that runs only when STEPS names it.
optional_step() {
  [[ " ${STEPS:-} " == *" $1 "* ]] || { steps_here+="$1 "; return 0; }
  step "$@"
}

{
  echo "commit: $(cat "$here/COMMIT" 2>/dev/null)"
  echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host:   $(hostname 2>/dev/null)"
  echo "STEPS:  ${STEPS:-every step but the optional ones}${QUICK:+ (QUICK=$QUICK)}"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,persistence_mode --format=csv 2>&1
  # More of the card's state, in a query of its own so that a field an older driver lacks
  # cannot cost the line above.
  timeout 20 nvidia-smi --query-gpu=pci.bus_id,uuid,clocks.max.memory,clocks.mem,clocks.applications.graphics,temperature.gpu,compute_mode,mig.mode.current,ecc.mode.current --format=csv 2>&1
  # What else the host offers, for the record and for choosing the next steps.
  for tool in nvcc ncu nsys compute-sanitizer; do
    echo "$tool: $(command -v "$tool" || ls /usr/local/cuda*/bin/"$tool" 2>/dev/null | head -n 1 || true)"
  done
  echo "python3: $(timeout 60 python3 -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -n 1)"
} | tee "$out/card.txt"

# cuBLASLt for the baselines: the toolkit's, else PyTorch's nvidia packages.
for dir in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 \
  $(timeout 30 python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cublas", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  if ls "$dir"/libcublasLt.so* >/dev/null 2>&1; then
    export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
    echo "cuBLASLt from $dir" | tee -a "$out/card.txt"
    break
  fi
done
# After it, every library folder of PyTorch's nvidia packages (the CUDA runtime, NVRTC and cuRAND
# that tests/candle_cuda links, e.g. nvidia/cu13/lib), so that they are found without taking the
# place of the cuBLASLt chosen above.
for dir in $(timeout 30 python3 -c 'import nvidia, os, glob; print(" ".join(d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))))' 2>/dev/null); do
  [[ ":${LD_LIBRARY_PATH:-}:" == *":$dir:"* ]] || export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$dir"
done
if [[ -f "$here/tests/candle_cuda" ]]; then
  echo "candle_cuda, libraries not found: $(ldd "$here/tests/candle_cuda" 2>&1 | grep 'not found' | awk '{print $1}' | paste -sd' ')" \
    | tee -a "$out/card.txt"
fi
nvcc_bin="$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -n 1)"
# On the GPU host a GPU test that would skip (no GPU, driver or kernels reached; the Hopper
# modules missing on a compute capability 9.0 GPU) fails instead (tests/common/gpu_open.rs).
export FUSEDROP_REQUIRE_GPU=1

# After a test executable failed, each of its tests that did not report "ok" runs again alone,
# in a process of its own (log: $out/NAME.alone.log). A kernel that traps (a Hopper barrier that
# never completes, a bad access) leaves the CUDA context unusable for every other test of its
# process, and a panic in a drop can abort the process before the rest report, so one fault can
# read as a whole executable failing; alone, only the tests that are wrong themselves fail.
# ALONE_LIMIT bounds each rerun (40 s: a Hopper barrier that never completes traps after 20 s),
# ALONE_BUDGET all reruns of the whole check together (seconds), so that a lease's time still
# reaches the steps after the tests when everything fails; none starts past the deadline.
alone_spent=0
rerun_alone() { # rerun_alone NAME EXECUTABLE
  local name="$1" exe="$2" log="$out/$1.alone.log" t start limit
  local -a tests=() passed=() failed=() not_rerun=()
  : > "$log"
  mapfile -t tests < <("$exe" --list 2>>"$log" | sed -n 's/: test$//p')
  if ((${#tests[@]} == 0)); then
    echo "--- $name: its tests could not be listed, nothing rerun ($log)"
    record "  $name, alone" "its tests could not be listed: $(tail -n 1 "$log")"
    return
  fi
  for t in "${tests[@]}"; do
    if grep -qxF "test $t ... ok" "$out/$name.log" || grep -qF "test $t ... ignored" "$out/$name.log"; then
      continue
    fi
    limit="${ALONE_LIMIT:-40}"
    if ((alone_spent >= ${ALONE_BUDGET:-240} || $(seconds_left) < limit + 5)); then
      not_rerun+=("$t")
      continue
    fi
    echo "=== $t" >> "$log"
    start=$SECONDS
    if timeout --kill-after=5 "$limit" "$exe" --exact "$t" >> "$log" 2>&1; then
      passed+=("$t")
    else
      failed+=("$t")
    fi
    alone_spent=$((alone_spent + SECONDS - start))
  done
  local verdict="${#passed[@]} pass, ${#failed[@]} fail"
  ((${#failed[@]})) && verdict+=": ${failed[*]}"
  ((${#not_rerun[@]})) && verdict+="; not rerun (ALONE_BUDGET spent or DEADLINE near): ${not_rerun[*]}"
  echo "--- $name, each test not reported ok, alone: $verdict"
  record "  $name, alone" "$verdict"
}

# In the order STEPS names them, else the Hopper forward's and backward's first (what matters
# most if the deadline cuts the run short), then the rest by name.
ordered=" "
for name in ${STEPS:-} test-gpu_forward test-gpu_backward; do
  [[ $name == test-* && -f "$here/tests/${name#test-}" && $ordered != *" ${name#test-} "* ]] \
    && ordered+="${name#test-} "
done
for t in "$here"/tests/*; do
  [[ -f $t && $ordered != *" $(basename "$t") "* ]] && ordered+="$(basename "$t") "
done
for test_name in $ordered; do
  t="$here/tests/$test_name"
  step "test-$test_name" 240 "$t" || rerun_alone "test-$test_name" "$t"
done
step selftest 180 "$here/fusedrop" selftest
# Past a fault in a Hopper kernel (one that traps ends every later check of its process): the
# same checks and the bench with no Hopper kernel loaded, so the mma.sync and SIMT paths are
# still checked and measured on the H100 / H200. Run only when STEPS names them.
optional_step selftest-no-hopper 180 "$here/fusedrop" selftest --no-hopper
optional_step bench-no-hopper 300 "$here/fusedrop" bench --quick --no-hopper --csv "$out/bench-no-hopper.csv"
step demo-cuda 120 "$here/fusedrop" demo --device cuda --epochs 20 --out "$out/demo" --summary-json "$out/demo-summary.json"

if [[ -n "$nvcc_bin" ]]; then
  # The cross-check needs the build: STEPS names both.
  if step curand-build 120 "$nvcc_bin" -O2 -arch=sm_90 -I "$here/kernels" "$here/curand_check.cu" -o "$out/curand_check" \
    && [[ -x "$out/curand_check" ]]; then
    step curand-crosscheck 60 "$out/curand_check"
  fi
else
  record curand-crosscheck "SKIPPED (no nvcc on this host)"
fi

# The four compute-sanitizer tools over `selftest --sanitize`, whose shapes take every production
# path (vector loads and stores, every forward tile, the Hopper forward and backward on a compute
# capability 9.0 GPU, the tensor-core backward tiles and their split-K). Each log
# goes to $out/<tool>.log; commit them to docs/runs/ with the run.
sanitizer_bin="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)"
if [[ -n "$sanitizer_bin" ]]; then
  for tool in memcheck racecheck synccheck initcheck; do
    step "$tool" 600 "$sanitizer_bin" --tool "$tool" --error-exitcode 9 "$here/fusedrop" selftest --sanitize
  done
else
  record compute-sanitizer "SKIPPED (no compute-sanitizer)"
fi

if [[ "${QUICK:-0}" != "1" ]]; then
  step bench 300 "$here/fusedrop" bench --quick --csv "$out/bench.csv"
  # The tuning variants against production, one family per step (STEPS can pick them): Hopper
  # (issue 10; about 110 rows), mma.sync (issue 12; about 85) and f32 (issue 12; 5), most of the
  # time on the host (each output copied back and compared).
  step sweep-hopper 300 "$here/fusedrop" sweep --quick --family hopper
  step sweep-mma-sync 240 "$here/fusedrop" sweep --quick --family mma-sync
  step sweep-f32 60 "$here/fusedrop" sweep --quick --family f32
  # Nsight Compute on the kernels the library chooses for sq in bf16 at p = 0.1 (on a compute
  # capability 9.0 GPU the Hopper ones): the forward's first launch, then the backward's first
  # dX and dW launches, each with every section (tensor-pipe and memory throughput, stall
  # reasons, source counters), replayed ncu's way. The text goes to $out/ncu-*.log, the report
  # to $out/ncu-*.ncu-rep for `ncu --import` elsewhere. A host that refuses the performance
  # counters fails the step (ERR_NVGPUCTRPERM) and the script carries on.
  ncu_bin="$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -n 1)"
  if [[ -n "$ncu_bin" ]]; then
    for pass in forward backward; do
      kernels='regex:^fusedrop_forward_'
      launches=1
      [[ $pass == backward ]] && { kernels='regex:^fusedrop_backward_d[xw]_'; launches=2; }
      step "ncu-$pass" 180 "$ncu_bin" --set full --kernel-name "$kernels" --launch-count "$launches" \
        --export "$out/ncu-$pass" --force-overwrite \
        "$here/fusedrop" bench --quick --shapes sq --dtypes bf16 --p 0.1 --pass "$pass"
    done
  else
    record ncu "SKIPPED (no ncu on this host)"
  fi
  if [[ -f "$here/peers/torch_peer.py" ]]; then
    step torch-peer 300 env PYTHONUNBUFFERED=1 python3 "$here/peers/torch_peer.py" --quick --csv "$out/torch_peer.csv"
  else
    record torch-peer "SKIPPED (no peers/torch_peer.py in the bundle)"
  fi
  # The clocks and throttle reasons after the measurements, beside card.txt's from before them.
  nvidia-smi -q -d CLOCK,PERFORMANCE > "$out/card-after-bench.txt" 2>&1
fi
# The whole suite (every shape, dtype and p; what closes a performance issue), when STEPS names
# them: too long for a short lease beside the other steps.
optional_step bench-full 540 "$here/fusedrop" bench --csv "$out/bench-full.csv"
if [[ -f "$here/peers/torch_peer.py" ]]; then
  optional_step torch-peer-full 540 env PYTHONUNBUFFERED=1 python3 "$here/peers/torch_peer.py" \
    --budget-s 480 --csv "$out/torch_peer-full.csv"
fi
# The performance issues' goals, and the targets they leave out, checked on this run's CSVs
# (`fusedrop goals`; the whole suite's where it was measured): a report, not a step that fails
# the check (no goal is met yet). Its text goes to $out/goals.txt.
bench_csv="$out/bench.csv"
peer_csv="$out/torch_peer.csv"
[[ -f "$out/bench-full.csv" ]] && bench_csv="$out/bench-full.csv"
[[ -f "$out/torch_peer-full.csv" ]] && peer_csv="$out/torch_peer-full.csv"
if [[ -f "$bench_csv" ]]; then
  csvs=("$bench_csv")
  [[ -f "$peer_csv" ]] && csvs+=("$peer_csv")
  "$here/fusedrop" goals "${csvs[@]}" > "$out/goals.txt" 2>&1
  record goals "$(tail -n 1 "$out/goals.txt")  [goals.txt]"
fi

# Every step STEPS names must have been a step of this run.
for name in ${STEPS:-}; do
  if [[ "$steps_here" != *" $name "* ]]; then
    record "$name" "NOT RUN: no step of that name in this run (a typo, QUICK=1, a missing tool, or curand-crosscheck without curand-build)"
    failed_steps=$((failed_steps + 1))
  fi
done

echo
echo "================ fusedrop GPU check summary ================"
cat "$out/card.txt"
echo "ended:  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
cat "$out/summary.txt"
if [[ -f "$out/goals.txt" ]]; then
  echo "--- goals.txt"
  cat "$out/goals.txt"
fi
if [[ -f "$out/bench.csv" ]]; then
  echo "--- bench.csv"
  { column -s, -t < "$out/bench.csv" 2>/dev/null || cat "$out/bench.csv"; } | head -n 60
fi
((failed_steps == 0))
