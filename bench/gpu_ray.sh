#!/usr/bin/env bash
# Issue #17's GPU run in one command (see bench/gpu_ray.py for the stages and the figures):
#   bash bench/gpu_ray.sh                               # on the GPU machine, artifacts/gpu-bundle carried along
#   bash bench/gpu_ray.sh --allow-cpu --bundle DIR      # the CPU rehearsal at tiny sizes
# It installs the bundle of bench/gpu_bundle.py offline, starts a one-node Ray cluster on 127.0.0.1 (free
# ports, an empty HOME with a fresh token, no usage reports), runs Train / Serve / paper / Tune in priority
# order with every figure written to $OUT/figures.json as it lands, and stops the cluster it started.
# PYTHON picks the interpreter (default python3: on the GPU machine the one that has torch).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 HF_HUB_OFFLINE=1
exec "${PYTHON:-python3}" bench/gpu_ray.py "$@"
