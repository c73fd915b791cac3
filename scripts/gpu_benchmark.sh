#!/usr/bin/env bash
# GPU cost benchmark of the config's methods (config/paper.yaml: SAFEMax, SalUn, SA) at the paper's model size and
# batches (docs/performance.md); on PRESET=tiny, the default config's.
#
# On a machine with a GPU and the suite installed:
#   OUT=/tmp/bench bash scripts/gpu_benchmark.sh
# Through the device tool (a bare GPU machine with PyTorch but without jsonschema):
#   1. here, once (needs the pip registry):   bash scripts/gpu_benchmark.sh --fetch-wheels    # -> .whl/ (git-ignored)
#   2. device run: command "bash scripts/gpu_benchmark.sh", carry [".whl"], timeout_s 600
#   3. copy benchmark.json and benchmark.log to docs/benchmarks/gpu-<device>-<rows>.json/.log and render
#      docs/benchmarks/gpu-<device>.md from the JSON(s): python scripts/benchmark_report.py docs/benchmarks/gpu-*.json
# Writes to $OUT: benchmark.json (the full report), benchmark.log (this script's output), gpu-<device>.md.
#
# Measured sizing (H200, 2026-12-04, docs/benchmarks/gpu-nvidia-h200.md): the bf16 row took ~80 s (priors 42,
# methods 22, sampler 10, 20 steps), its switch ablation ~150 s (torch.compile's first SAFEMax step alone 91 s,
# its sampler 45 s), and the strict-fp32 row ~400 s (each prior section 80-110 s, mostly outside its timed runs:
# autotuning and set-up on first use, see warmup_run_wall_s). With the 200 timed steps of now (from 20-30), each
# method section of a row takes about 200 x its step time longer (bf16 ~0.1-0.25 s, fp32 ~0.16-0.38 s per step: about
# +1.5 min for the bf16 row's methods, under +1 min for the ablation's four SAFEMax rows, +3 min for the fp32
# row's; an estimate from those step times, not measured). So one call of ~7 minutes holds the bf16 row, the ablation and
# perhaps the start of the fp32 row: the rows run in that order, each method right after its own priors
# and the config's reference_method (SAFEMax) first, then those with fewer priors, so the time limit cuts the least
# important part. For the full fp32 row, a second call:
#   PRECISIONS=fp32 SWITCHES=0 STEPS=50 bash scripts/gpu_benchmark.sh   (~7 min; at 200 steps the fp32 row, ~400 s
#   at 30, would not fit), then merge the two JSONs:
#   python scripts/benchmark_report.py bf16.json fp32.json  (each row says which run it came from).
# UNLEARNBENCH_BENCHMARK_BUDGET_S stops starting ablation rows after that many seconds, and `timeout`
# interrupts the benchmark at LIMIT_S (the JSON keeps every finished section).
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-paper}                      # tiny: a CPU smoke test of this script
PRECISIONS=${PRECISIONS:-bf16 fp32}          # in this order (the ablation runs right after bf16)
SWITCHES=${SWITCHES:-1}                      # 0: no switch ablation
STEPS=${STEPS:-200}                          # timed steps per method and precision: the steady-state step time
                                             # (the projections' median) over 200 steps; the first and the
                                             # warm-up steps are kept apart (first_step_s, projected_job_rte_min)
WARMUP=${WARMUP:-5}
LIMIT_S=${LIMIT_S:-390}                      # the benchmark itself (+ <= 20 s to stop, + setup and report:
                                             # the whole script stays under ~7.5 min)
export UNLEARNBENCH_BENCHMARK_BUDGET_S=${UNLEARNBENCH_BENCHMARK_BUDGET_S:-270}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # What the device image lacks (docs: /work/.library/device/KINDS.md lists its packages), at the suite's pins,
  # for its Python 3.12 on x86-64. Pure-Python wheels except rpds-py. (No diffusers: the suite's UNet is its own.)
  mkdir -p "$WHEELS"
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" \
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  ls -l "$WHEELS"
  exit 0
fi

OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 UNLEARNBENCH_QUIET=1

# Packages the image lacks, from carried wheels (installed into /tmp/site, nothing else is touched).
if ! "$PY" -c "import jsonschema" 2>/dev/null; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "jsonschema missing and no wheels in $WHEELS: run 'bash scripts/gpu_benchmark.sh --fetch-wheels'" \
         "where pip works, and carry $WHEELS" >&2
    exit 1
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # the checkout, installed or not

switch_flag=()
[[ "$SWITCHES" == 0 ]] && switch_flag=(--no-switches)
status=0
{
  echo "== $(date -u +%FT%TZ)  $(uname -srm)  $(nproc) CPUs"
  git log -1 --format='commit %H %s' 2>/dev/null || true
  nvidia-smi || true
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version())
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
EOF
  echo "== unlearnbench benchmark --preset $PRESET --precision $PRECISIONS --steps $STEPS --warmup $WARMUP (limit ${LIMIT_S}s)"
  set +e
  timeout --signal=INT --kill-after=20 "$LIMIT_S" "$PY" -m unlearnbench.cli benchmark --preset "$PRESET" \
    --precision $PRECISIONS --steps "$STEPS" --warmup "$WARMUP" --out "$OUT/benchmark.json" "${switch_flag[@]}"
  status=$?
  set -e
  echo "== benchmark exit status $status"
  if [[ -f "$OUT/benchmark.json" ]]; then
    "$PY" scripts/benchmark_report.py "$OUT/benchmark.json" --out-dir "$OUT"
    "$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print('complete:', r['complete'], '| section_s:', {k: round(v, 1) for k, v in r['section_s'].items()})" "$OUT/benchmark.json"
  fi
  exit $status
} 2>&1 | tee "$OUT/benchmark.log"
