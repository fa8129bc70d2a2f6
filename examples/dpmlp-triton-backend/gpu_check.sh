#!/usr/bin/env bash
# The GPU checks of issue 18, in one go, on a machine with a CUDA GPU, torch (CUDA), triton and
# cupy; run from the repository root with dpmlp installed (pip install -e .) and MNIST in
# $DPMLP_DATA_DIR:
#
#     bash examples/dpmlp-triton-backend/gpu_check.sh
#
# Logs go to $OUT (default ./gpu-check-logs), one per step, and a summary to $OUT/summary.txt.
# Every step runs whatever happened before it (set -u, no set -e), under a time limit.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-check-logs}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME LIMIT_S CMD...: run CMD, log to $OUT/NAME.log, one summary line
  local name=$1 limit=$2
  shift 2
  local began=$SECONDS
  echo "== $name: $*" | tee -a "$OUT/commands.txt"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local last
  last=$(grep -E "passed|failed|skipped|error|verify|test accuracy|done:|Traceback|dpmlp:" "$OUT/$name.log" \
         | tail -n 2 | tr '\n' ' ')
  printf '%-28s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - began))" "$last" | tee -a "$SUMMARY"
}

PARTS=${1:-all}  # all, or a comma-separated subset of: conformance,train,bench
want() { [ "$PARTS" = all ] || [[ ",$PARTS," == *",$1,"* ]]; }

step install 120 python -m pip install --no-deps --no-build-isolation --no-index -e examples/dpmlp-triton-backend
step list-backends 60 python -m core.train --list-backends
if want conformance; then
  for be in cupy pycuda triton; do
    step "conformance-$be" 300 python -m pytest -q -p no:cacheprovider -p core.conformance.plugin \
         --pyargs core.conformance --dpmlp-backend "$be" -rs
  done
fi
if want train; then
  # full MNIST ($DPMLP_DATA_DIR), default flags, lockstep --verify (every step checked, eager)
  step triton-verify-full 400 python -m core.train --backend triton --verify
  # the same with CUDA graphs (auto): the defaults' accuracy
  step triton-train-graphs 200 python -m core.train --backend triton
  step triton-mpirun-2 300 mpirun --oversubscribe -n 2 python -m core.train --backend triton --comm mpi -e 1 --verify
  step triton-nccl-2 200 mpirun --oversubscribe -n 2 python -m core.train --backend triton --comm nccl -e 1
  # the device pre-flight: one line and exit 2 (rc=2 expected)
  step preflight-triton-n3e6 120 python -m core.train --backend triton -n 3000000
  step preflight-cupy-n3e6 120 python -m core.train --backend cupy -n 3000000
fi
if want bench; then
  step bench 400 python -m core.bench --backends cupy,pycuda,triton --hidden 256,1024 --batch 800 \
       --no-reference ${DPMLP_DATA_DIR:+--data-dir "$DPMLP_DATA_DIR"} --json "$OUT/bench.json"
fi
echo
cat "$SUMMARY"
