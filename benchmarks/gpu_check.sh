#!/usr/bin/env bash
# The GPU check, about 5 minutes, from the repository root of a machine with an NVIDIA GPU and
# jax (CUDA), flax, optax, orbax, torch, transformers and pytest; Fiddle, seqio and TensorFlow
# are not needed. Results go to $OUT (default benchmarks/gpu_out): nvidia-smi's list, the
# gpu-marked tests' output, and gpu_check.json with the train step's figures.
#   OUT=/some/dir bash benchmarks/gpu_check.sh            # llama_1b, bfloat16, cuDNN attention
#   bash benchmarks/gpu_check.sh --smoke                  # toy model, any machine (a CPU too)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
status=0

{ nvidia-smi -L || echo "nvidia-smi: not available"; } 2>&1 | tee "$OUT/nvidia_smi.txt"
$PY -c 'import sys, jax; print("python", sys.version.split()[0], "| jax", jax.__version__, "|", jax.devices())' \
  2>&1 | tee "$OUT/versions.txt"

echo "== gpu-marked tests (fail, not skip, if the machine has a GPU that JAX does not use)"
if $PY -c 'import pytest' 2>/dev/null; then
  timeout 200 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_attention_backends.py \
    >"$OUT/gpu_tests.txt" 2>&1 || status=1
  tail -n 15 "$OUT/gpu_tests.txt"
else
  echo "pytest is not installed: the gpu tests did not run (its wheels must travel)" | tee "$OUT/gpu_tests.txt"
  status=1
fi

echo "== train step"
timeout 300 $PY benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/train_step.txt" | tail -n 8
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "gpu_check: exit status $status; results in $OUT"
exit $status
