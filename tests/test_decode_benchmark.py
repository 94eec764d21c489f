"""The decode benchmark runs, and at tiny size its three decoders agree token for token.

This is also the check that our greedy generation equals HF `generate` on the same weights
(grouped-query attention on), which the benchmark's ratio relies on.
"""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("decode_benchmark", REPO / "benchmarks" / "decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_greedy_tokens_equal_hf_generate_and_the_no_cache_loop(capsys):
    bench = load_benchmark()
    argv = [
        "--embedding_dim=32",
        "--num_blocks=2",
        "--head_dim=8",
        "--num_kv_heads=2",
        "--batch=2",
        "--prompt_len=5",
        "--new_tokens=12",
        "--repeats=1",
        "--torch_threads=1",
    ]
    bench.main(argv)
    printed = capsys.readouterr().out
    assert "greedy tokens equal: 12/12 with HF, 12/12 with the no-cache loop" in printed
    for line in ("ours (KV cache)", "HF generate (torch)", "ours / HF", "cache speed-up"):
        assert line in printed
