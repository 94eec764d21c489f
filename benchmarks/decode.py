"""Decode speed: our KV-cache generation against HF `generate` and against no cache, side by side.

    python benchmarks/decode.py                       # a 3.4M-parameter model, 64 + 128 tokens
    python benchmarks/decode.py --embedding_dim=1024 --num_blocks=8 --head_dim=64 --num_kv_heads=4
    python benchmarks/decode.py --torch_threads=1     # on a shared CPU (see --help)

One random model (every weight drawn, so nothing hides behind an initial value) is run three
ways on the same prompt for the same number of greedy tokens, each timed after a warm-up call:
  ours        `Sampler` (llama_fdl.model.sampling): prefill, then one cached token per step;
  hf          `transformers` `generate` (torch, float32, eager attention, its own KV cache) on the
              same weights (exported with export_hf), do_sample=False;
  no cache    our model re-run over the whole (prompt + new) window for every token: the full
              forward a static-shape JAX loop needs without a cache.
It prints generated tokens per second for each, ours/hf and ours/no-cache, and how many of the
greedy tokens ours and HF agree on (with random weights, float rounding may flip a near-tie late).
Numbers depend on the machine: compare ratios from one run, on one machine.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

from llama_fdl.model import LlamaConfig, LlamaTransformer  # noqa: E402
from llama_fdl.model.hf import export_hf  # noqa: E402
from llama_fdl.model.sampling import Sampler, SamplingOptions  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab_size", type=int, default=259)
    parser.add_argument("--embedding_dim", type=int, default=256)
    parser.add_argument("--num_blocks", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--num_kv_heads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1, help="prompts decoded together")
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each; the best counts")
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=None,
        help="torch.set_num_threads for HF; default: torch's own (on a shared CPU, 1 avoids its "
        "threads spinning against other processes)",
    )
    return parser.parse_args(argv)


def random_params(config: LlamaConfig, seed: int = 0):
    shapes = jax.eval_shape(LlamaTransformer(config).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    rng = np.random.RandomState(seed)

    def draw(path, leaf):
        if path[-1].key == "scale":
            return jnp.asarray(1.0 + 0.1 * rng.standard_normal(leaf.shape), jnp.float32)
        fan_in = leaf.shape[0] if path[-1].key != "embedding" else 1
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes["params"]))


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: compilation, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(args: argparse.Namespace) -> dict[str, float]:
    """Measures the three ways; returns tokens/s of each, the ratios and the agreement."""
    import torch

    config = LlamaConfig(
        vocab_size=args.vocab_size,
        embedding_dim=args.embedding_dim,
        num_blocks=args.num_blocks,
        head_dim=args.head_dim,
        num_kv_heads=args.num_kv_heads,
    )
    params = random_params(config)
    prompt_BP = (
        np.random.RandomState(1).randint(0, args.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
    )
    segments_BP = np.ones_like(prompt_BP)
    steps = args.new_tokens
    generated = args.batch * steps

    # Ours, with the KV cache.
    sampler = Sampler(LlamaTransformer(config), SamplingOptions(max_new_tokens=steps, temperature=0.0))
    key = jax.random.key(0)
    ours_tokens = np.asarray(sampler(params, prompt_BP, segments_BP, key).tokens)
    ours_s = best_time(
        lambda: jax.block_until_ready(sampler(params, prompt_BP, segments_BP, key).tokens), args.repeats
    )

    # Ours, re-running the full forward over the padded window for every token.
    width = args.prompt_len + steps
    forward = jax.jit(lambda p, i: LlamaTransformer(config).apply({"params": p}, i))

    def no_cache() -> np.ndarray:
        window = np.zeros((args.batch, width), np.int32)
        window[:, : args.prompt_len] = prompt_BP
        for t in range(args.prompt_len, width):
            window[:, t] = np.asarray(jnp.argmax(forward(params, window)[:, t - 1], axis=-1))
        return window[:, args.prompt_len :]

    no_cache_tokens = no_cache()
    no_cache_s = best_time(no_cache, args.repeats)

    # HF transformers generate, float32, same weights.
    hf = export_hf(params, config)
    hf.config._attn_implementation = "eager"
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = hf.to(device)
    input_ids = torch.from_numpy(prompt_BP.astype(np.int64)).to(device)

    def hf_generate() -> np.ndarray:
        with torch.no_grad():
            out = hf.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                pad_token_id=0,
            )
        if device == "cuda":
            torch.cuda.synchronize()
        return out[:, args.prompt_len :].cpu().numpy()

    hf_tokens = hf_generate()
    hf_s = best_time(hf_generate, args.repeats)

    def agreement(a: np.ndarray, b: np.ndarray) -> int:
        """Leading greedy tokens on which every row agrees."""
        differs = np.flatnonzero(np.any(a != b, axis=0))
        return int(differs[0]) if differs.size else a.shape[1]

    return {
        "ours_tokens_per_s": generated / ours_s,
        "hf_tokens_per_s": generated / hf_s,
        "no_cache_tokens_per_s": generated / no_cache_s,
        "ours_over_hf": hf_s / ours_s,
        "cache_speedup": no_cache_s / ours_s,
        "agree_with_hf": agreement(ours_tokens, hf_tokens),
        "agree_with_no_cache": agreement(ours_tokens, no_cache_tokens),
        "steps": steps,
        "jax_device": jax.devices()[0].device_kind,
        "torch_device": device if device == "cuda" else f"cpu, {torch.get_num_threads()} threads",
    }


def main(argv: list[str]) -> None:
    args = parse(argv)
    with jax.default_matmul_precision("highest"):  # float32 as torch computes it
        result = run(args)
    kv = args.num_kv_heads or args.embedding_dim // args.head_dim
    print(
        f"model d={args.embedding_dim} blocks={args.num_blocks} heads={args.embedding_dim // args.head_dim} "
        f"kv_heads={kv} vocab={args.vocab_size}; batch {args.batch}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, greedy, float32; JAX on {result['jax_device']}, torch on "
        f"{result['torch_device']}"
    )
    print(f"ours (KV cache)        {result['ours_tokens_per_s']:10,.1f} tokens/s")
    print(f"HF generate (torch)    {result['hf_tokens_per_s']:10,.1f} tokens/s")
    print(f"ours without cache     {result['no_cache_tokens_per_s']:10,.1f} tokens/s")
    print(f"ours / HF              {result['ours_over_hf']:10.2f}x")
    print(f"cache speed-up         {result['cache_speedup']:10.2f}x")
    print(
        f"greedy tokens equal: {result['agree_with_hf']}/{result['steps']} with HF, "
        f"{result['agree_with_no_cache']}/{result['steps']} with the no-cache loop"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
