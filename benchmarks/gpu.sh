#!/usr/bin/env bash
# The GPU run on the lent machine (one H100/H200, 16 cores, no package registry, no .venv): one device call,
#
#   run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=600)
#
# after `make gpu-wheels` here has put the four wheels the machine's image lacks into .whl/ (about 42 MiB of
# the call's 64). It uses the machine's own python3 (torch, timm, scikit-learn, ... are there), installs the
# wheels into $SITE, checks the environment (python -m benchmarks.environment --require-cuda: exit 3 at
# once on a problem), runs `python -m benchmarks gpu` time-boxed to what is left of LIMIT, and packs into
# $OUT (what comes back): log.txt, gpu-tuning.tgz, gpu.tgz and perf-gpu.tgz (results/gpu-tuning, results/gpu,
# results/perf/gpu, without cache/), gpu-smoke.tgz (runs/gpu-smoke) and gpu.json (the pre-registration the pilot
# wrote, benchmarks/preregistration/gpu.json). Unpack the archives at the repository root and commit.
# The folders stay on the machine while it is warm: a second call of the same command soon after resumes the
# run where the first stopped (the machine goes back after 30 s idle, or 30 min held).
#
# Settings (environment variables):
#   PYTHON=python3        the interpreter (tests point it at the project's .venv)
#   LIMIT=570             seconds for the whole script: a 600 s call less 30 s for the tool's transfers
#   OUT=/tmp/lrgroups-gpu-out   where log.txt and the archives go ($OUT on the machine: set by the tool)
#   SITE=/tmp/site        where the carried wheels are installed (prepended to PYTHONPATH)
#   WHEELS=.whl           the folder of carried wheels (none there: the packages must be importable already)
#   RESULTS=results RUNS=runs   the run's folders (--results, --runs), packed into $OUT
#   REHEARSE=1            a rehearsal without a GPU: no --require-cuda, and `gpu --rehearse`
#   GPU_COMMAND=...       replaces the run's command (a shell string; SECONDS_LEFT, PYTHON, RESULTS, RUNS exported)
# Exit code: 3 when the wheels or the environment are not right, else the run's own exit code.
set -u
cd "$(dirname "$0")/.." || exit 3
START=$(date +%s)
LIMIT=${LIMIT:-570}
PACK_MARGIN=${PACK_MARGIN:-30}  # seconds kept for packing $OUT after the run
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/lrgroups-gpu-out}
SITE=${SITE:-/tmp/site}
WHEELS=${WHEELS:-.whl}
RESULTS=${RESULTS:-results}
RUNS=${RUNS:-runs}
export PYTHON RESULTS RUNS PYTHONUNBUFFERED=1
unset OMP_NUM_THREADS  # all 16 cores there; the runner sets its own thread counts
mkdir -p "$OUT" || exit 3

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "=== [$(elapsed) s] $*"; }

install_wheels() {
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    say "installing the carried wheels: $(cd "$WHEELS" && echo *.whl)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl || { echo "error: installing $WHEELS/*.whl into $SITE failed"; return 3; }
  else
    say "no wheels in $WHEELS/: checking that the carried packages are importable without them"
  fi
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -m benchmarks.environment --carried || {
    echo "error: the carried wheels are missing. Here: make gpu-wheels, then" \
         'run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=600)'
    return 3
  }
}

run_gpu() {
  SECONDS_LEFT=$(( LIMIT - $(elapsed) - PACK_MARGIN ))
  export SECONDS_LEFT
  if [ "$SECONDS_LEFT" -lt 30 ]; then
    echo "error: only $SECONDS_LEFT s left of LIMIT=$LIMIT for the run: not started"
    return 124
  fi
  local command=${GPU_COMMAND:-"\"\$PYTHON\" -m benchmarks gpu --seconds $SECONDS_LEFT --results $RESULTS --runs $RUNS --environment-checked ${REHEARSE:+--rehearse}"}
  say "the run, $SECONDS_LEFT s: $command"
  # the run keeps to --seconds itself; timeout is the backstop that keeps time for packing
  timeout -s INT -k 15 $(( SECONDS_LEFT + 10 )) bash -c "$command"
  local code=$?
  say "the run exited with $code"
  return "$code"
}

# archive NAME FOLDER: FOLDER without cache/ and .partial/ into $OUT/NAME; its members are named as FOLDER
# (runs/gpu/...: unpack at the repository root), or from its parent when FOLDER is absolute.
archive() {
  local name=$1 folder=${2%/} base=.
  [ -d "$folder" ] || return 0
  case $folder in /*) base=$(dirname "$folder"); folder=$(basename "$folder");; esac
  tar czf "$OUT/$name" -C "$base" --exclude=cache --exclude=.partial "$folder" || echo "warning: $name failed"
}

pack() {
  say "packing into $OUT"
  archive gpu-tuning.tgz "$RESULTS/gpu-tuning"
  archive gpu.tgz "$RESULTS/gpu"
  archive perf-gpu.tgz "$RESULTS/perf/gpu"
  archive gpu-smoke.tgz "$RUNS/gpu-smoke"
  [ -z "${REHEARSE:-}" ] && [ -f benchmarks/preregistration/gpu.json ] && cp benchmarks/preregistration/gpu.json "$OUT/"
  for file in "$OUT"/*; do  # the tool brings back files of at most 16 MiB
    [ "$(stat -c %s "$file")" -le $(( 16 * 1024 * 1024 )) ] || echo "warning: $file is over 16 MiB and will not come back"
  done
  ls -l "$OUT"
}

main() {
  say "lrgroups GPU run: $(git rev-parse --short HEAD 2>/dev/null || echo 'no git'), LIMIT=$LIMIT s, OUT=$OUT${REHEARSE:+, rehearsal}"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  install_wheels || return 3
  local require_cuda=--require-cuda
  [ -n "${REHEARSE:-}" ] && require_cuda=
  say "environment"
  "$PYTHON" -m benchmarks.environment $require_cuda || {
    echo "error: the environment check failed (the problems above); nothing was run"
    return 3
  }
  run_gpu
  local code=$?
  pack
  say "done: exit code $code"
  return "$code"
}

main 2>&1 | tee -a "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
