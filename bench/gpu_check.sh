#!/usr/bin/env bash
# The GPU check: everything dualtensor runs on CuPy, on a machine with an NVIDIA GPU, in one go.
#
#   bash bench/gpu_check.sh            # writes bench/results/gpu_check.md (and the logs beside it)
#
# Installs nothing beyond the project's gpu and test extras (cupy-cuda12x), then
#  1. the test suite's CuPy cases on the real GPU (tests marked gpu: the xp-parametrised op, fgrad and
#     nn tests, training with --device gpu in every mode, device checkpoints and resume),
#  2. a short training of each model with --device gpu (MLP, ResNet18, ViT; forward and backprop),
#  3. bench/runtime.py --device gpu on every model (k = 1, 4, 16; no loop, a few repeats),
# and writes one results file. Each part's exit status is recorded; the script goes on after a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-bench/results}
mkdir -p "$OUT"
REPORT="$OUT/gpu_check.md"
LOG="$OUT/gpu_check_logs"
mkdir -p "$LOG"
export PIP_DISABLE_PIP_VERSION_CHECK=1

python -m pip install -q -e ".[gpu,test]" > "$LOG/pip.log" 2>&1 || { echo "pip install failed: $LOG/pip.log" >&2; exit 1; }
python - > "$LOG/device.txt" 2>&1 <<'PY'
import cupy
props = cupy.cuda.runtime.getDeviceProperties(0)
print(f"{props['name'].decode()} | CuPy {cupy.__version__} | CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()} | "
      f"{props['totalGlobalMem'] / 2**30:.0f} GiB")
PY
device_rc=$?

part() {  # name, command...: run, time and log one part
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  echo "| $name | $rc | $((SECONDS - t0)) s | \`$*\` |" >> "$LOG/parts.md"
  return 0
}
: > "$LOG/parts.md"
part tests python -m pytest -q -m gpu -p no:cacheprovider
for model in mlp resnet18 vit; do
  for grad in forward backprop; do
    part "train-$model-$grad" python -m dualtensor train --device gpu --model "$model" --dataset digits \
      --grad "$grad" --epochs 2 --batch-size 64 --k 16 --optimizer adam --lr 1e-3 --quiet \
      --out "$LOG/run-$model-$grad" --overwrite
  done
done
part runtime python bench/runtime.py --device gpu --ks 1,4,16 --no-loop --repeats 3 --no-memory \
  --json "$LOG/runtime.json"

{
  echo "# GPU check (bench/gpu_check.sh)"
  echo
  echo "Device: $(cat "$LOG/device.txt") (exit $device_rc); $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  echo "| part | exit | wall | command |"
  echo "|---|---:|---:|---|"
  cat "$LOG/parts.md"
  echo
  echo "## Tests"
  echo
  tail -n 3 "$LOG/tests.log"
  echo
  echo "## Training (test accuracy after 2 epochs on digits, steps per second)"
  echo
  for run in "$LOG"/run-*; do
    [ -f "$run/summary.json" ] && python -c "import json,sys; s=json.load(open(sys.argv[1])); \
print(f\"- {sys.argv[2]}: test accuracy {s['test_acc']:.4f}, {s['steps_per_s']:.1f} steps/s\")" \
      "$run/summary.json" "$(basename "$run")"
  done
  echo
  echo "## bench/runtime.py --device gpu"
  echo
  sed -n '/^|/p' "$LOG/runtime.log"
} > "$REPORT"
echo "wrote $REPORT"
