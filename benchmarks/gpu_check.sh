#!/usr/bin/env bash
# The GPU check, about 10 minutes, from the repository root of a machine with an NVIDIA GPU and
# jax (CUDA), flax, optax, orbax, torch (CUDA), transformers and pytest; Fiddle, seqio and
# TensorFlow are not needed. Results go to $OUT (default benchmarks/gpu_out): nvidia-smi's list,
# the gpu-marked tests' output, gpu_check.json with llama_1b's train step, step_vs_hf.json with
# the same model against HF transformers, decode.txt, and the float32 tests run at full precision.
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
  timeout 420 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_attention_backends.py \
    >"$OUT/gpu_tests.txt" 2>&1 || status=1
  tail -n 15 "$OUT/gpu_tests.txt"
else
  echo "pytest is not installed: the gpu tests did not run (its wheels must travel)" | tee "$OUT/gpu_tests.txt"
  status=1
fi

echo "== train step"
timeout 200 $PY benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/train_step.txt" | tail -n 8
[ "${PIPESTATUS[0]}" = 0 ] || status=1

if [ "${1:-}" != "--smoke" ]; then
  echo "== the same model and batch against HF transformers (sdpa, AdamW), bfloat16"
  # JAX must not take 75% of the GPU up front: torch trains in the same process.
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 180 $PY -m benchmarks.step_vs_hf --shapes=1b \
    --dtypes=bfloat16 --attention=cudnn --rounds=3 --steps=3 --json "$OUT/step_vs_hf.json" \
    2>&1 | tail -n 3 | tee "$OUT/step_vs_hf.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1

  echo "== decoding: KV cache against HF generate, float32 at full precision"
  JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 150 \
    $PY -m benchmarks.decode --vocab_size=32000 --embedding_dim=1024 --num_blocks=8 \
    --num_kv_heads=4 --batch=8 --prompt_len=128 --new_tokens=128 --repeats=2 \
    2>&1 | tail -n 8 | tee "$OUT/decode.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1

  echo "== float32 tests on the GPU (conftest asks for full matmul precision, not TF32)"
  if $PY -c 'import pytest' 2>/dev/null; then
    timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_decode.py tests/test_hf_families.py \
      >"$OUT/float32_tests.txt" 2>&1 || status=1
    tail -n 8 "$OUT/float32_tests.txt"
  fi
fi
echo "gpu_check: exit status $status; results in $OUT"
exit $status
