#!/usr/bin/env bash
# The wheels gpu_run.sh installs on the device machine, whose image has torch, transformers, peft, accelerate,
# httpx and older anyio, click and h11, but not the serving stack, openai's client (nor its httpx2) or bitsandbytes:
# downloaded here into .whl/ (ignored by git), for Python 3.12 on x86-64, each without its dependencies (the list is
# the closure over what the image lacks or may have too old for these).
# Versions are the ones the project's tests run with; bitsandbytes (QLoRA, gpu_bench's 7B part and gpu_suite.sh)
# is 43 MB: with the rest (6 MB) and the working tree it stays under the device tool's 64 MiB carry limit.
# Usage: bash benchmarks/gpu_wheels.sh; then the run tool with carry [".whl"] (see benchmarks/gpu_bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(starlette==1.10.0 uvicorn==0.55.0 openai==3.63.0 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 jiter==0.19.0 sniffio==1.3.1 anyio==4.16.0 h11==0.16.0 click==8.5.1
        httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 bitsandbytes==0.50.2)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform any -d .whl "${WHEELS[@]}"
du -ch .whl/*.whl | tail -1
