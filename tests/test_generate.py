"""Using a trained run: samples in TensorBoard, load_run/complete, launch/sample.py, export to HF,
and trainer.init_from (an HF directory or another run).

One tiny run, started from a random HF Llama directory and trained in-process (4 steps, samples
every 2), is shared by the tests; the command-line tests start the real scripts where the process
boundary (exit code, one line on stderr) is what they check.
"""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from launcher import accumulator, last_line, scalars

import experiments
from llama_fdl import generate, runner, saved_run
from llama_fdl.cli import ConfigError
from llama_fdl.data import pipeline
from llama_fdl.export import export_run
from llama_fdl.model import LlamaTransformer, scanned_to_unrolled_params
from llama_fdl.model.hf import import_hf
from llama_fdl.train import checkpoint as ckpt
from llama_fdl.train import loop
from llama_fdl.train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
# Fixed in advance: a loss computed in the train step against the same loss computed by a
# separate forward (float32 reassociation only); HF against us; the least a control must differ.
LOSS_RTOL = 1e-5
HF_ATOL = 1e-4
DIFFERENT = 1e-3


def tiny_graph(**trainer):
    cfg = experiments.tiny()
    cfg.optimizer.warmup_steps = 1
    cfg.trainer.log_every = 1
    for name, value in {"num_train_steps": 4, "eval_every": 4, **trainer}.items():
        setattr(cfg.trainer, name, value)
    cfg.trainer.checkpoint.every_steps = 2
    return cfg


def hf_directory(path, **overrides):
    """A random HF Llama with experiments.tiny's architecture, saved to `path`."""
    config = transformers.LlamaConfig(
        **{
            "vocab_size": 259,
            "hidden_size": 32,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "head_dim": 16,
            "rms_norm_eps": 1e-6,
            **overrides,
        }
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            weight.copy_(0.1 * torch.randn_like(weight) + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(path)
    return path


@pytest.fixture(autouse=True, scope="module")
def highest_precision():
    """float32 matmuls in full precision on GPUs too, in the run and in the references alike:
    with TF32 a train step's loss and a separate forward's would differ beyond LOSS_RTOL."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory):
    return hf_directory(tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, hf_source, highest_precision):
    workdir = tmp_path_factory.mktemp("runs") / "a"
    runner.run(tiny_graph(sample_every=2, init_from=f"hf:{hf_source}"), workdir)
    return workdir


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "launch" / name), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)


def first_batch_loss(graph, params) -> float:
    """The loss `params` give on the first batch of `graph`'s train stream."""
    experiment = runner.check(graph)
    batch = {k: jnp.asarray(v) for k, v in next(pipeline.train_iterator(experiment.data)).items()}
    model = LlamaTransformer(experiment.model.config)

    @jax.jit
    def loss(params, batch):
        logits = model.apply(
            {"params": params},
            batch["decoder_input_tokens"],
            pos_idx=batch["decoder_positions"],
            segment_ids=batch["decoder_segment_ids"],
        )
        log_probs = jax.nn.log_softmax(logits)
        token_losses = -jnp.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], -1)[..., 0]
        weights = batch["decoder_loss_weights"]
        return jnp.sum(token_losses * weights) / jnp.sum(weights)

    return float(loss(params, batch))


# ----------------------------------------------------------------------------- samples


def test_training_writes_samples_of_fixed_prompts_to_the_text_tab(run_a):
    events = accumulator(run_a).Tensors("samples/text_summary")
    assert [e.step for e in events] == [2, 4]
    texts = [e.tensor_proto.string_val[0].decode() for e in events]
    for text in texts:
        assert text.count("prompt:") == 3 and text.count("continuation:") == 3
    prompts = [[part.split("continuation:")[0] for part in t.split("prompt:")[1:]] for t in texts]
    assert prompts[0] == prompts[1]  # the same prompts every time, so samples compare


# ----------------------------------------------------------------------------- init_from


def test_init_from_an_hf_directory_starts_from_its_weights(run_a, hf_source):
    _, params = import_hf(str(hf_source))
    logged = scalars(run_a)["train/loss"][1]  # the loss of the initial weights on batch 1
    np.testing.assert_allclose(logged, first_batch_loss(tiny_graph(), params), rtol=LOSS_RTOL)


@pytest.mark.parametrize("scan_blocks", [True, False], ids=["same_layout", "unrolled"])
def test_init_from_a_run_takes_its_parameters_and_a_fresh_optimizer_state(run_a, scan_blocks):
    # The loop starts every init_from source the same way (`_first_state`); run a's own start
    # from an HF directory checks that path end to end, this checks what a run source yields.
    graph = tiny_graph(init_from=f"run:{run_a}@2")
    graph.model.config.scan_blocks = scan_blocks
    experiment = runner.check(graph)
    tx, _ = experiment.optimizer(4)
    boxed = state_lib.abstract_state(experiment.model, tx, 64, 0)
    shardings = state_lib.state_shardings(boxed, experiment.mesh, experiment.model.config.parallel)
    state = loop._first_state(experiment, tx, shardings)
    expected = saved_run.load_run(run_a, step=2).params
    if not scan_blocks:
        expected = scanned_to_unrolled_params(expected)
    jax.tree.map(np.testing.assert_array_equal, state.params, expected)
    assert int(state.step) == 0
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state))  # counts, moments
    # Control: step 4's parameters are other ones.
    latest = saved_run.load_run(run_a).params["embed"]["embedding"]
    assert not np.array_equal(state.params["embed"]["embedding"], latest)


def test_a_source_of_another_architecture_is_refused_before_the_run_starts(run_a, tmp_path):
    source = hf_directory(tmp_path / "hf", num_key_value_heads=1)
    with pytest.raises(
        ValueError, match="the source has kv_heads=1, model.config has 2; set model.config.num_kv_heads"
    ):
        runner.run(tiny_graph(init_from=f"hf:{source}"), tmp_path / "d")
    assert not (tmp_path / "d").exists()
    other = tiny_graph(init_from=f"run:{run_a}")
    other.model.config.num_blocks = 3
    with pytest.raises(ValueError, match="the source has num_blocks=2, model.config has 3"):
        runner.check(other)
    with pytest.raises(ValueError, match="no checkpoint at step 7; it has steps 2, 4"):
        runner.check(tiny_graph(init_from=f"run:{run_a}@7"))
    with pytest.raises((ValueError, ConfigError), match="is not 'hf:DIR', 'run:DIR' or 'run:DIR@STEP'"):
        runner.check(tiny_graph(init_from="gs://bucket/run"))


# ----------------------------------------------------------------------------- load_run


def greedy_by_full_forward(model: generate.TextModel, prompt: str, steps: int, width: int = 32) -> str:
    """Greedy continuation recomputed with one full forward per token (no cache)."""
    ids = list(model.vocabulary.encode(prompt))
    forward = jax.jit(lambda p, i: LlamaTransformer(model.model.config).apply({"params": p}, i))
    for _ in range(steps):
        padded = np.zeros((1, width), np.int32)
        padded[0, : len(ids)] = ids  # right padding never reaches earlier positions
        ids.append(int(np.argmax(forward(model.params, padded)[0, len(ids) - 1])))
    return model.vocabulary.decode(ids[-steps:])


def test_load_run_continues_prompts_like_the_full_forward(run_a):
    model = saved_run.load_run(run_a)
    assert model.step == 4 and model.context_length == 64
    prompts = ["def main():\n    ", "import os"]
    got = model.complete(prompts, max_new_tokens=8, temperature=0.0, stop_at_eos=False)
    assert got == [greedy_by_full_forward(model, p, 8) for p in prompts]
    earlier = saved_run.load_run(run_a, step=2)
    assert earlier.step == 2
    # Control: the step-2 parameters are other ones.
    assert not np.array_equal(earlier.params["embed"]["embedding"], model.params["embed"]["embedding"])


def test_bad_requests_are_refused_in_one_sentence(run_a, tmp_path):
    with pytest.raises(ckpt.NoSuchCheckpoint, match="no checkpoint at step 3; it has steps 2, 4"):
        saved_run.load_run(run_a, step=3)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((run_a / "config.json").read_text())
    with pytest.raises(ckpt.NoSuchCheckpoint, match="holds no complete checkpoint"):
        saved_run.load_run(empty)
    with pytest.raises(ValueError, match="has no config.json"):
        saved_run.load_run(tmp_path / "nothing")
    model = saved_run.load_run(run_a)
    with pytest.raises(ValueError, match="is 70 tokens long, but the model's context is 64 tokens"):
        model.complete(["x" * 70])
    with pytest.raises(ValueError, match="max_new_tokens=60 after a prompt of 10 tokens exceeds"):
        model.complete(["y" * 10], max_new_tokens=60)


def test_sample_script_prints_continuations_and_refuses_bad_input_in_one_line(run_a):
    out = script(
        "sample.py", f"--workdir={run_a}", "--prompt=def f(x):", "--num_samples=3", "--max_new_tokens=10"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for k in (1, 2, 3):
        assert f"=== prompt 1, sample {k} (step 4 of {run_a}) ===" in out.stdout
    bad = script("sample.py", f"--workdir={run_a}", "--prompt=x", "--step=3")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert last_line(bad.stderr).startswith("error: ") and "no checkpoint at step 3" in last_line(bad.stderr)


# ----------------------------------------------------------------------------- export


def test_export_writes_a_model_transformers_loads_with_equal_logits(run_a, tmp_path):
    assert export_run(run_a, tmp_path / "hf") == 4
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    model = saved_run.load_run(run_a)
    idx = np.random.RandomState(0).randint(0, 259, (2, 20))
    ours = np.asarray(LlamaTransformer(model.model.config).apply({"params": model.params}, jnp.asarray(idx)))
    with torch.no_grad():
        theirs = hf(torch.from_numpy(idx)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=HF_ATOL, rtol=0)
    # Control: the export of step 2 is another model.
    export_run(run_a, tmp_path / "hf2", step=2)
    earlier = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "hf2", attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        assert np.abs(earlier(torch.from_numpy(idx)).logits.numpy() - theirs).max() > DIFFERENT
    # The command refuses to write over a directory, in one line.
    again = script("export.py", f"--workdir={run_a}", f"--out={tmp_path / 'hf'}")
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert last_line(again.stderr).startswith("error: --out=") and "already exists" in last_line(again.stderr)
