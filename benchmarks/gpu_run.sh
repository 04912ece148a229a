#!/usr/bin/env bash
# gpu_bench.py, then the tests that run differently on a GPU, on the device machine: the carried wheels in .whl/
# (benchmarks/gpu_wheels.sh) go to /tmp/site as in gpu_suite.sh. Writes $OUT/gpu_bench.log, $OUT/gpu_results.md (the
# table to append to benchmarks/RESULTS.md here) and $OUT/pytest.log; prints the table last.
# Run tool: {"command": "bash benchmarks/gpu_run.sh", "carry": [".whl"], "timeout_s": 600}
set -uo pipefail
OUT=${OUT:-/tmp/gpu-run}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 420 python3 benchmarks/gpu_bench.py --results "$OUT/gpu_results.md" "$@" 2>&1 | tee "$OUT/gpu_bench.log" \
  | grep --line-buffered "^\[gpu_bench"
bench=$?
timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 tests/test_dtype.py tests/test_attention.py \
  tests/test_chunked_loss.py tests/test_quantize.py > "$OUT/pytest.log" 2>&1
tests=$?
tail -3 "$OUT/pytest.log"
cat "$OUT/gpu_results.md" 2>/dev/null || echo "gpu_bench wrote no table (exit $bench): see gpu_bench.log"
exit $((bench || tests))
