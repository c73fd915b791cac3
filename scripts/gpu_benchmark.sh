#!/usr/bin/env bash
# GPU cost benchmark of the three methods at the paper's model size and batches (docs/performance.md).
#
# On a machine with a GPU and the suite installed:
#   OUT=/tmp/bench bash scripts/gpu_benchmark.sh
# Through the device tool (a bare GPU machine with PyTorch but without jsonschema):
#   1. here, once (needs the pip registry):   bash scripts/gpu_benchmark.sh --fetch-wheels    # -> .whl/ (git-ignored)
#   2. device run: command "bash scripts/gpu_benchmark.sh", carry [".whl"], timeout_s 600
#   3. copy the markdown it writes ($OUT/gpu-<device>.md) to docs/benchmarks/, keep benchmark.json beside it.
# Writes to $OUT: benchmark.json (the full report), benchmark.log (this script's output), gpu-<device>.md.
#
# Sizing (H100, estimated before any GPU run; the log's section_s shows the real split): 30 timed steps after
# 5 warm-up steps per method and precision. A SAFEMax step is one forward+backward of 128 images (4.6 TFLOP),
# SA's two (9.3), SalUn's two plus a forward (10.8): ~0.9 PFLOP per precision for the methods, ~30 s in strict
# fp32 and a few seconds in bf16; the priors' slices and the sampler (batch 1,000 = 2,000 UNet rows per step,
# 24 TFLOP per step) about as much again. Then the switch ablation on SAFEMax and the sampler; torch.compile
# compiles for one to two minutes. UNLEARNBENCH_BENCHMARK_BUDGET_S stops starting ablation rows after that
# many seconds, and `timeout` interrupts the benchmark at LIMIT_S (the JSON keeps every finished section).
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-paper}                      # tiny: a CPU smoke test of this script
STEPS=${STEPS:-30}
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
  echo "== unlearnbench benchmark --preset $PRESET --precision fp32 bf16 --steps $STEPS --warmup $WARMUP (limit ${LIMIT_S}s)"
  set +e
  timeout --signal=INT --kill-after=20 "$LIMIT_S" "$PY" -m unlearnbench.cli benchmark --preset "$PRESET" \
    --precision fp32 bf16 --steps "$STEPS" --warmup "$WARMUP" --out "$OUT/benchmark.json"
  status=$?
  set -e
  echo "== benchmark exit status $status"
  if [[ -f "$OUT/benchmark.json" ]]; then
    "$PY" scripts/benchmark_report.py "$OUT/benchmark.json" --out-dir "$OUT"
    "$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print('complete:', r['complete'], '| section_s:', {k: round(v, 1) for k, v in r['section_s'].items()})" "$OUT/benchmark.json"
  fi
  exit $status
} 2>&1 | tee "$OUT/benchmark.log"
