#!/usr/bin/env bash
# Issue #18's GPU run in one command (see bench/gpu_gemma.py for the stages, the two calls and the figures):
#   bash bench/gpu_gemma.sh                        # on the GPU machine, artifacts/gemma-pack-a and -b carried
#   bash bench/gpu_gemma.sh --allow-cpu --out DIR  # the CPU rehearsal at tiny sizes
# PYTHON picks the interpreter (default python3: on the GPU machine the one that has torch).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
exec "${PYTHON:-python3}" bench/gpu_gemma.py run "$@"
