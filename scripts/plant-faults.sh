#!/usr/bin/env bash
# Plants each fault of scripts/faults.tsv, one at a time, in a copy of kernels/ and tests/harness/,
# runs the CPU harness (tests/kernels_on_cpu/) on the copy through FUSEDROP_HARNESS_KERNELS and
# FUSEDROP_HARNESS_DRIVERS, and prints which tests caught it. A fault in src/ (the Rust launch
# plans the harness runs, src/cuda/launch_plan.rs) is planted in a copy of the crate, whose test
# executable is rebuilt for it (in a target directory of its own: the first such fault builds
# the crate and its kernels once, each later one recompiles the crate only). A test failing counts
# as catching a fault only if the same tests pass on the unmodified sources: each (tests, build)
# pair of the list runs once unmodified first (a failure there is reported, not counted as a
# catch). Exits 1 if any fault survives (no test failed), and 2 if a fault's sed script no longer
# changes its file, the faulty copy does not compile, or the unmodified tests fail (the fault list
# or the tree is out of date). Nothing in the work tree is modified.
#
#   scripts/plant-faults.sh                # every fault
#   scripts/plant-faults.sh 'keep iff'     # only faults whose name contains the text
#   FAULTS_FROM=101 FAULTS_TO=150 scripts/plant-faults.sh
#                                          # the 101st to the 150th of them (counted from 1 in
#                                          # the order of the list; each header shows the number)
#
# Slow (every fault rebuilds the harness drivers it needs: about 35 s a fault on average on 2
# cores, two hours for the whole list): not part of scripts/test.sh. FAULTS_FROM and FAULTS_TO
# split the list over several runs.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/nvcc-env.sh
export FUSEDROP_REQUIRE_NVCC=1
only="${1:-}"
from="${FAULTS_FROM:-1}"
to="${FAULTS_TO:-}"
for bound in "$from" "$to"; do
  [[ -z "$bound" || "$bound" =~ ^[1-9][0-9]*$ ]] ||
    { echo "FAULTS_FROM and FAULTS_TO must be positive integers, not '$bound'" >&2; exit 2; }
done
# The lines the name filter selects, read once; FAULTS_FROM and FAULTS_TO count within them.
selected=()
while IFS= read -r line; do
  name="${line%%$'\t'*}"
  [[ -z "$name" || "$name" == \#* ]] && continue
  [[ -n "$only" && "$name" != *"$only"* ]] && continue
  selected+=("$line")
done < scripts/faults.tsv
total=${#selected[@]}
((total > 0)) || { echo "no fault in scripts/faults.tsv has '$only' in its name" >&2; exit 2; }
to="${to:-$total}"
((from <= to && to <= total)) ||
  { echo "FAULTS_FROM=$from and FAULTS_TO=$to must satisfy 1 <= FAULTS_FROM <= FAULTS_TO <= $total (the faults selected)" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The drivers built for this run stay in it: another run (or a patched test run) going on at the
# same time would otherwise remove them as stale between two of a test's launches.
export FUSEDROP_HARNESS_BUILD_DIR="$work/drivers"

echo "== building tests/kernels_on_cpu/"
# The test executable is copied, so that a rebuild during the run cannot change what runs.
exe="$(cargo test --release --test kernels_on_cpu --no-run --message-format=json 2>"$work/cargo.log" |
  sed -n 's/.*"executable":"\([^"]*kernels_on_cpu[^"]*\)".*/\1/p' | tail -n 1)" || exe=""
[[ -x "$exe" ]] || { tail -n 30 "$work/cargo.log" >&2; echo "could not build the kernels_on_cpu test executable" >&2; exit 2; }
cp "$exe" "$work/kernels_on_cpu"
# A snapshot taken once, so that every fault is planted in the sources as they were at the start.
mkdir "$work/base"
cp -r kernels tests/harness "$work/base/"
# The copy of the crate for faults in src/, made when the first one comes.
crate="$work/crate"
rust_exe() {
  (cd "$crate" && CARGO_TARGET_DIR="$work/target" cargo test --release --test kernels_on_cpu \
    --no-run --message-format=json 2>"$work/cargo.log") |
    sed -n 's/.*"executable":"\([^"]*kernels_on_cpu[^"]*\)".*/\1/p' | tail -n 1
}
# baseline TESTS BUILD: sets baseline_failed to the tests of that filter and build that fail on
# the unmodified snapshot (empty when they all pass), running them once per pair.
declare -A baseline_runs
baseline() {
  local key="$1|$2" filter=() sanitize=""
  if [[ -z "${baseline_runs[$key]+set}" ]]; then
    [[ "$1" != all ]] && filter=("$1")
    [[ "$2" == address ]] && sanitize="address"
    echo "== the unmodified sources first (tests: $1; build: $2)"
    FUSEDROP_HARNESS_KERNELS="$work/base/kernels" FUSEDROP_HARNESS_DRIVERS="$work/base/harness" \
      FUSEDROP_HARNESS_SANITIZE="$sanitize" \
      "$work/kernels_on_cpu" "${filter[@]}" >"$work/baseline.log" 2>&1 || true
    if grep -q '^test result: ok\.' "$work/baseline.log"; then
      baseline_runs[$key]=""
    else
      baseline_runs[$key]="$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$work/baseline.log" | paste -sd, -)"
      [[ -n "${baseline_runs[$key]}" ]] || baseline_runs[$key]="(no result: $(tail -n 1 "$work/baseline.log"))"
    fi
  fi
  baseline_failed="${baseline_runs[$key]}"
}
survived=0
broken=0
rows=()
for ((index = from; index <= to; index++)); do
  IFS=$'\t' read -r name file script tests build <<<"${selected[index - 1]}"
  rm -rf "$work/kernels" "$work/harness"
  cp -r "$work/base/kernels" "$work/kernels"
  cp -r "$work/base/harness" "$work/harness"
  case "$file" in
    kernels/*) target="$work/kernels/${file#kernels/}" ;;
    tests/harness/*) target="$work/harness/${file#tests/harness/}" ;;
    src/*)
      if [[ ! -d "$crate" ]]; then
        echo "== copying the crate for the faults in src/"
        mkdir "$crate"
        git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$crate"
        cp -r "$crate/src" "$work/base/src"
      fi
      rm -rf "$crate/src"
      cp -r "$work/base/src" "$crate/src"
      target="$crate/$file" ;;
    *) echo "fault '$name': $file is not under kernels/, tests/harness/ or src/" >&2; exit 2 ;;
  esac
  sed -i -e "$script" "$target"
  case "$file" in
    kernels/*) original="$work/base/kernels/${file#kernels/}" ;;
    tests/harness/*) original="$work/base/harness/${file#tests/harness/}" ;;
    *) original="$work/base/$file" ;;
  esac
  if cmp -s "$original" "$target"; then
    rows+=("$name|BROKEN: the sed script no longer matches $file")
    echo "== [$index/$total] $name ($file)"
    echo "   -> ${rows[-1]#*|}"
    broken=$((broken + 1))
    continue
  fi
  filter=()
  [[ "$tests" != "all" ]] && filter=("$tests")
  sanitize=""
  [[ "$build" == "address" ]] && sanitize="address"
  baseline "$tests" "$build"
  echo "== [$index/$total] $name ($file; tests: $tests; build: $build)"
  if [[ -n "$baseline_failed" ]]; then
    rows+=("$name|BROKEN: these tests fail on the unmodified sources too: $baseline_failed")
    echo "   -> ${rows[-1]#*|}"
    broken=$((broken + 1))
    continue
  fi
  log="$work/log"
  run_exe="$work/kernels_on_cpu"
  if [[ "$file" == src/* ]]; then
    run_exe="$(rust_exe)" || run_exe=""
    if [[ ! -x "$run_exe" ]]; then
      rows+=("$name|BROKEN: the faulty crate does not compile ($(grep -m 1 '^error' "$work/cargo.log"))")
      echo "   -> ${rows[-1]#*|}"
      broken=$((broken + 1))
      continue
    fi
  fi
  FUSEDROP_HARNESS_KERNELS="$work/kernels" FUSEDROP_HARNESS_DRIVERS="$work/harness" \
    FUSEDROP_HARNESS_SANITIZE="$sanitize" \
    "$run_exe" "${filter[@]}" >"$log" 2>&1 || true
  if grep -q "failed to compile tests/harness" "$log"; then
    rows+=("$name|BROKEN: the faulty copy does not compile")
    echo "   -> ${rows[-1]#*|}"
    broken=$((broken + 1))
    continue
  fi
  caught="$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" | sort | paste -sd, - | sed 's/,/, /g')"
  if [[ -z "$caught" ]]; then
    rows+=("$name|SURVIVED")
    survived=$((survived + 1))
  else
    rows+=("$name|$caught")
  fi
  echo "   -> ${rows[-1]#*|}"
done

echo
echo "| planted fault | caught by (failing kernels_on_cpu tests) |"
echo "|---|---|"
for row in "${rows[@]}"; do
  echo "| ${row%%|*} | ${row#*|} |"
done
echo
echo "${#rows[@]} faults: $((${#rows[@]} - survived - broken)) caught, $survived survived, $broken broken"
if ((broken > 0)); then exit 2; fi
if ((survived > 0)); then exit 1; fi
