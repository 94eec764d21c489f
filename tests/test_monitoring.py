"""What a run shows: TensorBoard groups, text, HParams, profiler traces, MFU, checkpoint contents."""

import json
import time

import numpy as np
import pytest
from launcher import accumulator, checkpoint_steps, launch_here, scalars

from llama_fdl.model import LlamaConfig, num_matmul_params
from llama_fdl.train import flops

PEAK = 1e12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("monitoring") / "run"
    # The launcher's code in this process (launch_here): what is tested is what the run writes.
    result = launch_here(
        "--fdl_config=experiments.tiny",
        "--fdl.trainer.num_train_steps=30",
        "--fdl.trainer.checkpoint.every_steps=5",
        "--fdl.trainer.checkpoint.keep_last=2",
        "--fdl.trainer.checkpoint.keep_every=10",
        "--profile_steps=3,4",
        f"--peak_flops_per_device={PEAK}",
        f"--workdir={workdir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_scalars_come_in_readable_groups(run):
    series = scalars(run)
    expected = {
        "train": ["loss", "perplexity", "accuracy", "skipped_steps"],
        "eval": ["loss", "perplexity", "accuracy"],
        "opt": ["learning_rate", "grad_norm", "param_norm", "update_norm"],
        "perf": ["tokens_per_sec", "step_time_s", "mfu", "mfu_noncausal_attention"],
        "data": ["padding_fraction", "documents_per_batch"],
    }
    for group, names in expected.items():
        for name in names:
            assert f"{group}/{name}" in series, f"{group}/{name} missing"
    for step, loss in series["eval/loss"].items():
        assert series["eval/perplexity"][step] == pytest.approx(np.exp(loss), rel=1e-5)
    # Packing 64-token rows from chunks of at most 63 bytes: one document per row at least.
    assert all(v >= 8 for v in series["data/documents_per_batch"].values())


def test_mfu_follows_the_stated_convention(run):
    series = scalars(run)
    config = LlamaConfig(vocab_size=259, embedding_dim=32, num_blocks=2, head_dim=16)
    seq = 64
    by_hand = 6 * num_matmul_params(config) + 6 * 2 * 2 * 16 * seq
    assert flops.flops_per_token(config, seq) == by_hand
    assert flops.flops_per_token(config, seq, causal=False) == by_hand + 6 * 2 * 2 * 16 * seq
    for step, tps in series["perf/tokens_per_sec"].items():
        assert series["perf/mfu"][step] == pytest.approx(tps * by_hand / PEAK, rel=1e-4)
        assert series["perf/mfu_noncausal_attention"][step] > series["perf/mfu"][step]


def test_the_config_is_in_the_text_tab_and_hparams_hold_the_final_loss(run):
    acc = accumulator(run)
    assert "config/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "model.config.embedding_dim = 32" in text
    final = acc.Scalars("hparams/eval_loss")[-1].value
    assert final == pytest.approx(scalars(run)["eval/loss"][30], rel=1e-6)
    assert "_hparams_/session_start_info" in acc.summary_metadata
    # TensorBoard lists every directory holding event files as a run: this one, and only once.
    event_dirs = {p.parent for p in run.rglob("events.out.tfevents.*")}
    assert event_dirs == {run}, event_dirs


def test_profiler_trace_lands_where_tensorboard_looks(run):
    traces = list((run / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


def test_checkpoints_keep_the_last_k_plus_every_mth_and_record_metadata(run):
    # Saved every 5 steps up to 30; keep the last 2, plus every multiple of 10.
    assert checkpoint_steps(run) == [10, 20, 25, 30]
    meta = json.loads((run / "checkpoints" / "30" / "metadata" / "metadata").read_text())
    assert json.loads(meta["config_json"]) == json.loads((run / "config.json").read_text())
    assert meta["versions"]["jax"] and meta["versions"]["orbax-checkpoint"]
    assert (run / "checkpoints" / "30" / "data" / "process_0.index").exists()


def test_a_resumed_writer_purges_what_the_killed_run_logged_after_its_checkpoint(tmp_path):
    """TensorBoard's own loader shows one curve, each step once, the resumed run's values.

    The killed run logged steps 1..15 but its last checkpoint was step 10; the resumed run logs
    11..20 again with other values. Control: without purge_step the loader shows the killed
    run's steps 11..15 twice, so the check below would notice a missing marker.
    """
    from llama_fdl.train.metrics import MetricWriter

    def two_runs(workdir, purge_step):
        killed = MetricWriter(str(workdir))
        for step in range(1, 16):
            killed.scalars(step, {"train/loss": 100.0 + step})
        killed.close()
        time.sleep(1.1)  # event files are named by the second: a new one, as a real resume makes
        resumed = MetricWriter(str(workdir), purge_step=purge_step)
        for step in range(11, 21):
            resumed.scalars(step, {"train/loss": float(step)})
        resumed.close()
        return [(e.step, e.value) for e in accumulator(workdir).Scalars("train/loss")]

    curve = two_runs(tmp_path / "purged", purge_step=11)
    assert curve == [(s, 100.0 + s) for s in range(1, 11)] + [(s, float(s)) for s in range(11, 21)]
    unpurged = [step for step, _ in two_runs(tmp_path / "unpurged", purge_step=None)]
    assert len(unpurged) == 25 and len(set(unpurged)) == 20


def test_a_writer_that_cannot_close_does_not_hide_the_error_that_ended_the_run(tmp_path):
    # On a full disk the event file's last flush fails; the run's own error (the unwritable
    # checkpoint) must still be what propagates, to become the launcher's one-line error.
    from llama_fdl.train.metrics import MetricWriter

    class FullDisk(MetricWriter):
        def close(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(RuntimeError, match="the run's own error"):
        with FullDisk(str(tmp_path)).closed_on_exit():
            raise RuntimeError("the run's own error")
    with pytest.raises(OSError, match="No space left"):  # control: alone, the close error is raised
        with FullDisk(str(tmp_path)).closed_on_exit():
            pass
