"""The benchmarks run (at toy sizes: the real ones never run in the test command), and the
machinery behind the faster step says what it should: the dry run, the compilation cache, the
accuracy statistic, the huge-page environment and the GPU-test rules."""

from __future__ import annotations

import subprocess
import sys

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import compile_time, gpu_check, shapes, step_vs_hf, variants
from llama_fdl import host_memory, optim, sharding
from llama_fdl.model import LlamaTransformer
from llama_fdl.train import aot
from llama_fdl.train.step import _token_stats


def test_step_comparison_runs_both_frameworks_on_a_toy_model():
    result = step_vs_hf.compare(shapes.TOY, rounds=1, steps=1, matmul_flops=1e9)
    assert result.fdl_tokens_per_s > 0 and result.hf_tokens_per_s > 0
    assert result.ratio > 0 and result.num_params == shapes.TOY.num_params


def test_variants_build_the_configs_they_name_and_run():
    fields = variants.variant_fields("parallel.remat=none,scan_blocks=False")
    assert fields == {"scan_blocks": False, "parallel": variants.ParallelConfig(remat="none")}
    assert variants.variant_fields("base") == {}
    with pytest.raises(ValueError, match="is not NAME=VALUE"):
        variants.variant_fields("scan_blocks")
    result = variants.main(["--shape=toy", "--rounds=1", "--steps=1", "base", "parallel.remat=none"])
    assert set(result) == {"base", "parallel.remat=none", "HF"}
    assert all(t["wall"] > 0 and t["cpu"] > 0 for t in result.values())


def test_compile_time_table_has_a_row_per_depth():
    text = compile_time.table(shapes.TOY, [1, 2])
    assert [line.split("|")[1].strip() for line in text.splitlines()[2:]] == ["1", "2"]


def test_gpu_check_smoke_runs_on_cpu(tmp_path):
    result = gpu_check.main(["--smoke", "--steps=1", f"--out={tmp_path}"])
    assert (tmp_path / "gpu_check.json").exists() and np.isfinite(result["loss"])
    assert result["dry_run_estimate_bytes"] > 0
    assert gpu_check.llama_1b_config().embedding_dim == 2048  # read from the golden file


def test_the_1b_benchmark_shape_is_llama_1b_model():
    # step_vs_hf's `1b` shape (the GPU comparison with HF) must stay experiments.llama_1b's model.
    assert shapes.LLAMA_1B.llama_config(dtype="bfloat16") == gpu_check.llama_1b_config()
    assert shapes.LLAMA_1B.llama_config() != gpu_check.llama_1b_config()  # control: dtype differs


def test_gpu_check_path_imports_neither_fiddle_nor_seqio():
    # On the GPU machine neither is installed: the gpu tests and the GPU script must not need them.
    assert not {"fiddle", "seqio", "tensorflow"} & {m.split(".")[0] for m in _imports_of_gpu_path()}


def _imports_of_gpu_path() -> set[str]:
    import subprocess

    code = (
        "import sys; sys.path[:0] = ['tests', '.']; import conftest, test_attention_backends; "
        "from benchmarks import gpu_check; print(' '.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=conftest.REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.split())


def test_dry_run_memory_grows_with_the_batch():
    config = shapes.TOY.llama_config()
    model, mesh = LlamaTransformer(config), sharding.build_mesh(config.parallel)
    tx, schedule = optim.adamw(100, warmup_steps=0)
    small, large = (aot.dry_run(model, tx, schedule, mesh, batch_size=b, sequence_length=16) for b in (2, 16))
    assert 0 < small.temp_bytes < large.temp_bytes and small.fits
    assert small.argument_bytes > 0 and "peak" in small.text()
    # Control: a device too small for the step is reported as such.
    tight = aot.DryRunReport(**{**small.__dict__, "device_memory_bytes": small.peak_bytes - 1})
    assert tight.fits is False and "does NOT fit" in tight.text()


def test_accuracy_counts_the_argmax_like_argmax_does():
    logits = jax.random.normal(jax.random.key(0), (4, 8, 50))
    targets = jax.random.randint(jax.random.key(1), (4, 8), 0, 50)
    targets = targets.at[:, :4].set(jnp.argmax(logits, -1)[:, :4])  # half of them right
    batch = {"decoder_target_tokens": targets, "decoder_loss_weights": jnp.ones((4, 8))}
    expected = float(jnp.sum(jnp.argmax(logits, -1) == targets))
    assert float(_token_stats(logits, batch)["correct_sum"]) == expected >= 16
    # Control: other targets give another count.
    batch["decoder_target_tokens"] = (targets + 1) % 50
    assert float(_token_stats(logits, batch)["correct_sum"]) < expected


def test_huge_page_tunable_is_added_once_and_a_users_choice_kept(monkeypatch, tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(host_memory, "THP_SETTING", setting)
    env = host_memory.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert host_memory.environment_with_huge_pages(env) is None  # no second re-exec
    assert host_memory.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    setting.write_text("always madvise [never]\n")
    assert host_memory.environment_with_huge_pages({}) is None


def test_gpu_test_fails_where_the_machine_has_a_gpu_that_jax_misses(monkeypatch):
    class Item:
        def get_closest_marker(self, name):
            return object() if name == "gpu" else None

    monkeypatch.setattr(conftest, "gpu_seen_by_the_machine", lambda: "nvidia-smi -L: GPU 0: H100")
    with pytest.raises(pytest.fail.Exception, match="has a GPU .* but JAX runs on cpu"):
        conftest.pytest_runtest_setup(Item())
    monkeypatch.setattr(conftest, "gpu_seen_by_the_machine", lambda: None)  # control: no GPU
    with pytest.raises(pytest.skip.Exception):
        conftest.pytest_runtest_setup(Item())


def test_tests_ask_for_exact_float32_matmuls():
    assert jax.config.jax_default_matmul_precision == "highest"


def test_data_pipeline_benchmark_runs_on_toy_corpora(tmp_path):
    """Its corpora and pipeline timing at toy sizes (its step timing compiles small: not here)."""
    from benchmarks import data_pipeline
    from llama_fdl.data.config import DataConfig

    data_pipeline.write_jsonl(tmp_path / "jsonl", 100_000, file_bytes=30_000)
    data_pipeline.write_text_files(tmp_path / "text", 100_000)
    train = list((tmp_path / "jsonl").glob("train_*.jsonl"))
    assert len(train) > 1 and sum(p.stat().st_size for p in train) >= 100_000  # files of whole documents
    for source in (
        data_pipeline._jsonl_source(tmp_path / "jsonl"),
        data_pipeline._text_source(tmp_path / "text"),
    ):
        config = DataConfig(sequence_length=64, batch_size=4, source=source)
        assert data_pipeline.pipeline_tokens_per_second(config, seconds=0.2) > 0


def test_memory_benchmark_reads_the_childs_own_peak_not_the_parents():
    from benchmarks import memory

    ballast = np.ones(1_500_000_000 // 8)  # 1.5 GB resident in this (parent) process
    result = memory.measure("llama_fdl", "toy")
    assert 0 < result["before_bytes"] <= result["peak_bytes"] < ballast.nbytes
    # Control: ru_maxrss, which the benchmark read before, does carry the parent's peak over.
    code = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    inherited = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    assert inherited >= ballast.nbytes
