#!/usr/bin/env bash
# Checks scripts/gpu-check.sh's own logic without a GPU: a bundle of fake test executables that
# answer as Rust's test harness does (`--list`, `--exact NAME`, "test NAME ... ok" lines), one of
# which fails the way a trapped CUDA context makes a whole process fail. The script must rerun
# alone exactly the tests that did not report ok, and its summary must say which failed alone;
# the optional steps (selftest-no-hopper, bench-no-hopper, bench-full) run only when STEPS names
# them; after the bench, `fusedrop goals` reads its CSV (the whole suite's when it was measured)
# and the summary reports it without failing the check; the executables run in STEPS' order, and
# DEADLINE cuts a step's limit, keeps reruns from starting and reports a step with no time left.
# Part of the test command (scripts/test.sh); takes about 15 seconds (a hang waits for the deadline).
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bundle/tests"
cp scripts/gpu-check.sh "$work/bundle/"

# fake_gpu: four tests. Run together, `pass_together` passes, `broken` fails, `ignored_one` is
# ignored and `collateral` never reports (the process dies first). Alone, `broken` fails again
# and `collateral` passes. Every alone run is logged to runs.txt.
cat > "$work/bundle/tests/fake_gpu" <<'SH'
#!/usr/bin/env bash
here="$(dirname "$0")"
case "${1:-}" in
  --list) printf '%s: test\n' pass_together broken ignored_one collateral; echo; echo "4 tests, 0 benchmarks" ;;
  --exact)
    echo "$2" >> "$here/../runs.txt"
    [[ "$2" == broken ]] && { echo "test broken ... FAILED"; exit 101; }
    echo "test $2 ... ok" ;;
  *) echo "test pass_together ... ok"; echo "test ignored_one ... ignored, needs a GPU"
     echo "test broken ... FAILED"; echo "CUDA_ERROR_ILLEGAL_INSTRUCTION"; exit 134 ;;
esac
SH
# fake_ok: passes as a whole, so nothing of it may run again; but only where gpu-check.sh has
# exported FUSEDROP_REQUIRE_GPU=1 (on the GPU host a GPU test must not pass by skipping).
cat > "$work/bundle/tests/fake_ok" <<'SH'
#!/usr/bin/env bash
case "${1:-}" in
  --list) echo "fine: test" ;;
  --exact) echo "$2" >> "$(dirname "$0")/../runs.txt" ;;
  *) if [[ "${FUSEDROP_REQUIRE_GPU:-}" == 1 ]]; then echo "test fine ... ok"
     else echo "test fine ... FAILED (FUSEDROP_REQUIRE_GPU=1 not set)"; exit 101; fi ;;
esac
SH
chmod +x "$work/bundle/tests/"*

fail() { echo "check-gpu-check: $*" >&2; echo "--- gpu-check's output:" >&2; cat "$work/run.log" >&2; exit 1; }

status=0
STEPS="test-fake_gpu test-fake_ok" OUT="$work/out" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 || status=$?
[[ $status -eq 1 ]] || fail "exit status $status with a failed step (expected 1)"
summary="$work/out/summary.txt"
grep -qE '^test-fake_gpu +FAIL \(exit 134\)' "$summary" || fail "the failing executable is not reported FAIL (exit 134)"
grep -qE '^test-fake_ok +PASS' "$summary" || fail "the passing executable is not reported PASS"
grep -qE '^  test-fake_gpu, alone +1 pass, 1 fail: broken$' "$summary" \
  || fail "the summary does not say that broken alone failed and collateral alone passed"
[[ "$(sort "$work/bundle/runs.txt" | tr '\n' ' ')" == "broken collateral " ]] \
  || fail "rerun alone: $(tr '\n' ' ' < "$work/bundle/runs.txt") (expected broken and collateral only)"
grep -q '^=== collateral$' "$work/out/test-fake_gpu.alone.log" || fail "the alone runs are not logged"

# The rerun budget is the whole check's: a_slow (run before fake_gpu) spends it, so fake_gpu's
# tests are not rerun, and the summary says so.
rm "$work/bundle/runs.txt" "$work/bundle/tests/fake_ok"
cat > "$work/bundle/tests/a_slow" <<'SH'
#!/usr/bin/env bash
case "${1:-}" in
  --list) echo "slow: test" ;;
  --exact) echo "$2" >> "$(dirname "$0")/../runs.txt"; sleep 1.1; exit 101 ;;
  *) exit 101 ;;
esac
SH
chmod +x "$work/bundle/tests/a_slow"
ALONE_BUDGET=1 STEPS="test-a_slow test-fake_gpu" OUT="$work/out0" bash "$work/bundle/gpu-check.sh" \
  > "$work/run.log" 2>&1 || true
grep -qE '^  test-a_slow, alone +0 pass, 1 fail: slow$' "$work/out0/summary.txt" \
  || fail "the slow test was not rerun within the budget"
grep -qE '^  test-fake_gpu, alone +0 pass, 0 fail; not rerun \(ALONE_BUDGET spent or DEADLINE near\): broken collateral$' \
  "$work/out0/summary.txt" || fail "with ALONE_BUDGET spent the summary does not list the tests not rerun"
[[ "$(cat "$work/bundle/runs.txt")" == slow ]] || fail "a test ran again after ALONE_BUDGET was spent"

# The deadline (DEADLINE=20, the summary's 10 s set aside): the test executables run in the order
# STEPS names them, fake_gpu first, and its reruns (ALONE_LIMIT=1) fit; a_slow's run hangs and is
# stopped when the deadline is near, long before its 240 s limit, and no rerun of it starts.
# With DEADLINE=12 a step is reported NOT RUN without being started.
rm "$work/bundle/runs.txt"
cat > "$work/bundle/tests/a_slow" <<'SH'
#!/usr/bin/env bash
case "${1:-}" in
  --list) echo "slow: test" ;;
  --exact) echo "$2" >> "$(dirname "$0")/../runs.txt"; exit 101 ;;
  *) echo "a_slow" >> "$(dirname "$0")/../runs.txt"; sleep 60 ;;
esac
SH
start=$SECONDS
ALONE_LIMIT=1 DEADLINE=20 STEPS="test-fake_gpu test-a_slow" OUT="$work/out9" \
  bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 || true
((SECONDS - start < 18)) || fail "the run with DEADLINE=20 took $((SECONDS - start)) s"
grep -qE '^  test-fake_gpu, alone +1 pass, 1 fail: broken$' "$work/out9/summary.txt" \
  || fail "fake_gpu, named first, did not run first with its reruns"
grep -qE '^test-a_slow +TIMEOUT after ([1-9]|10)s' "$work/out9/summary.txt" \
  || fail "a step's limit was not cut to what is left before DEADLINE"
grep -qE '^  test-a_slow, alone +0 pass, 0 fail; not rerun \(ALONE_BUDGET spent or DEADLINE near\): slow$' \
  "$work/out9/summary.txt" || fail "a rerun started with the deadline near"
[[ "$(tr '\n' ' ' < "$work/bundle/runs.txt")" == "broken collateral a_slow " ]] \
  || fail "runs with DEADLINE=20: $(tr '\n' ' ' < "$work/bundle/runs.txt")"
DEADLINE=12 STEPS="test-a_slow" OUT="$work/out10" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 || true
grep -qE '^test-a_slow +NOT RUN: DEADLINE=12s reached$' "$work/out10/summary.txt" \
  || fail "a step with under 5 s left before DEADLINE is not reported NOT RUN"
rm "$work/bundle/tests/a_slow" "$work/bundle/runs.txt"

# An executable that cannot even list its tests (a library missing on the host): the summary
# says so instead of counting no reruns.
cat > "$work/bundle/tests/unloadable" <<'SH'
#!/usr/bin/env bash
echo "unloadable: error while loading shared libraries: libcuda.so.1" >&2
exit 127
SH
chmod +x "$work/bundle/tests/unloadable"
STEPS="test-unloadable" OUT="$work/out2" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 || true
grep -qE '^  test-unloadable, alone +its tests could not be listed: .*libcuda.so.1$' \
  "$work/out2/summary.txt" || fail "an executable that cannot list its tests is not reported so"
rm "$work/bundle/tests/unloadable"

# An optional step runs only when STEPS names it (here a fake fusedrop that logs its arguments).
cat > "$work/bundle/fusedrop" <<'SH'
#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/fusedrop-runs.txt"
SH
chmod +x "$work/bundle/fusedrop"
OUT="$work/out3" STEPS="selftest" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 || true
[[ "$(cat "$work/bundle/fusedrop-runs.txt")" == selftest ]] \
  || fail "STEPS=selftest ran: $(tr '\n' ';' < "$work/bundle/fusedrop-runs.txt")"
rm "$work/bundle/fusedrop-runs.txt"
OUT="$work/out3" STEPS="selftest-no-hopper" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 || true
[[ "$(cat "$work/bundle/fusedrop-runs.txt")" == "selftest --no-hopper" ]] \
  || fail "STEPS=selftest-no-hopper ran: $(tr '\n' ';' < "$work/bundle/fusedrop-runs.txt")"
rm "$work/bundle/fusedrop-runs.txt" "$work/bundle/tests/"*
# After the bench has written its CSV, `fusedrop goals` reads it, and the summary has its last
# line; it is not a step, so the check still passes.
cat > "$work/bundle/fusedrop" <<'SH'
#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/fusedrop-runs.txt"
case "$1" in
  bench) [[ "$*" == *--csv* ]] && echo "source,gpu" > "${@: -1}" ;;
  goals) echo "issue 10  NOT MET  ..."; echo "0 of 16 goals met (0 of the issues' 10, 0 of the other targets' 6)"; exit 1 ;;
esac
SH
OUT="$work/out5" STEPS="bench" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 \
  || fail "exit status $? with goals unmet (a report, not a failed step)"
[[ "$(tr '\n' ';' < "$work/bundle/fusedrop-runs.txt")" == \
  "bench --quick --csv $work/out5/bench.csv;goals $work/out5/bench.csv;" ]] \
  || fail "STEPS=bench ran: $(tr '\n' ';' < "$work/bundle/fusedrop-runs.txt")"
grep -qE '^goals +0 of 16 goals met \(0 of the issues. 10, 0 of the other targets. 6\)  \[goals.txt\]$' "$work/out5/summary.txt" \
  || fail "the summary has no goals line"
grep -q '^0 of 16 goals met' "$work/out5/goals.txt" || fail "goals.txt was not written"
rm "$work/bundle/fusedrop-runs.txt"
# The whole suite, when named, is what goals reads.
OUT="$work/out6" STEPS="bench-full" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 \
  || fail "exit status $? with only bench-full named"
[[ "$(tr '\n' ';' < "$work/bundle/fusedrop-runs.txt")" == \
  "bench --csv $work/out6/bench-full.csv;goals $work/out6/bench-full.csv;" ]] \
  || fail "STEPS=bench-full ran: $(tr '\n' ';' < "$work/bundle/fusedrop-runs.txt")"
rm "$work/bundle/fusedrop-runs.txt"
# Without STEPS every step runs but the optional ones.
OUT="$work/out4" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 || true
grep -qx selftest "$work/bundle/fusedrop-runs.txt" || fail "a run without STEPS skipped selftest"
! grep -q -- --no-hopper "$work/bundle/fusedrop-runs.txt" \
  || fail "a run without STEPS ran an optional step: $(grep -- --no-hopper "$work/bundle/fusedrop-runs.txt")"
! grep -q -- bench-full.csv "$work/bundle/fusedrop-runs.txt" \
  || fail "a run without STEPS ran the whole suite's bench"
# A name in STEPS that is no step of the run (a typo; the bench under QUICK=1) runs nothing and
# fails the check, and a CSV an earlier run left in $OUT is not read as this run's.
mkdir -p "$work/out7" && echo "source,gpu" > "$work/out7/bench.csv"
status=0
OUT="$work/out7" STEPS="selftest test-gpu_foward" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 \
  || status=$?
[[ $status -eq 1 ]] || fail "exit status $status with a misspelt step in STEPS (expected 1)"
grep -qE '^test-gpu_foward +NOT RUN' "$work/out7/summary.txt" || fail "a misspelt step is not reported NOT RUN"
[[ ! -e "$work/out7/bench.csv" && ! -e "$work/out7/goals.txt" ]] || fail "an earlier run's bench.csv was read"
status=0
QUICK=1 OUT="$work/out8" STEPS="bench" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 || status=$?
[[ $status -eq 1 ]] && grep -qE '^bench +NOT RUN' "$work/out8/summary.txt" \
  || fail "STEPS=bench under QUICK=1 is not reported NOT RUN (exit $status)"
rm "$work/bundle/fusedrop"

# A passing executable alone: exit status 0.
cat > "$work/bundle/tests/fake_ok" <<'SH'
#!/usr/bin/env bash
[[ "${1:-}" == --list ]] && echo "fine: test" || echo "test fine ... ok"
SH
chmod +x "$work/bundle/tests/fake_ok"
STEPS="test-fake_ok" OUT="$work/out1" bash "$work/bundle/gpu-check.sh" > "$work/run.log" 2>&1 \
  || fail "exit status $? although every step passed"

echo "check-gpu-check: gpu-check.sh reruns alone exactly the tests that did not report ok"
