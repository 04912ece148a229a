#!/usr/bin/env bash
# The whole test suite on a CUDA machine (run through the device tool, whose image has torch + transformers but not
# the serving and test extras): the carried wheels in .whl/ go to /tmp/site, then pytest runs across workers. There
# the bitsandbytes paths (4-bit loading, QLoRA on a pixel-shuffle model) run for real instead of being refused.
# Usage on the device: bash benchmarks/gpu_suite.sh  (writes $OUT/pytest.log and $OUT/junit.xml)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-suite}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import accelerate, bitsandbytes, peft, torch, transformers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, peft "
      f"{peft.__version__}, accelerate {accelerate.__version__}, bitsandbytes {bitsandbytes.__version__}")
PY
python3 -m pytest -q -p no:cacheprovider -n "${WORKERS:-12}" --durations=10 --junitxml="$OUT/junit.xml" \
  "${@:-tests}" > "$OUT/pytest.log" 2>&1
status=$?
grep -E "^(FAILED|ERROR)|passed|failed|skipped" "$OUT/pytest.log" | tail -40
exit $status
