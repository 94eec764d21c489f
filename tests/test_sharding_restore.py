"""A checkpoint saved on one mesh restores onto another: 8-way FSDP -> 2x2x2 -> one device.

On 8 simulated CPU devices: train 2 steps on the (1, 8, 1) mesh and save with the run's Orbax
manager (state and data iterator); restore onto (2, 2, 2), train a step, save; restore that onto
a single device and train a step. The losses of those two steps equal an uninterrupted (1, 8, 1)
run's, rtol 1e-5 (fixed in advance, float32), and the restored arrays carry the target mesh's
shardings. Control: restoring the step-1 checkpoint instead gives a loss outside the tolerance.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def measured(run_on_cpu_devices, tmp_path_factory):
    return run_on_cpu_devices(pathlib.Path(__file__), str(tmp_path_factory.mktemp("reshard")))


def test_resharded_restores_continue_like_an_uninterrupted_run(measured):
    straight = measured["straight"]
    for name, step_index in (("on_2x2x2", 2), ("on_one_device", 3)):
        loss = measured[name]
        assert abs(loss - straight[step_index]) <= LOSS_RTOL * abs(straight[step_index]), (
            name,
            loss,
            straight,
        )


def test_restored_arrays_take_the_target_layout(measured):
    assert measured["kernel_spec_on_2x2x2"] == [None, "fsdp", "tensor", None]
    assert measured["devices_on_one_device"] == 1
    assert measured["data_iterator_continued"]


def test_control_restoring_another_step_is_noticed(measured):
    loss, expected = measured["control_from_step_1"], measured["straight"][2]
    assert abs(loss - expected) > LOSS_RTOL * abs(expected)


def _child(directory: pathlib.Path) -> dict:
    import jax
    import tensorflow as tf

    from llama_fdl.train import checkpoint as ckpt
    from llama_fdl.train import state as state_lib
    from tests import sharded_harness as h

    tf.config.set_visible_devices([], "GPU")
    data = h.batches(4)
    fsdp, cube, one = h.setup((1, 8, 1)), h.setup((2, 2, 2)), h.setup((1, 1, 1), jax.devices()[:1])
    config = ckpt.CheckpointConfig(keep_last=5)
    meta = ckpt.metadata("{}")

    def iterator():
        # Stands in for the seqio stream: the checkpoint must carry its position too.
        return iter(tf.data.Dataset.range(1000))

    def restore(manager, step, run):
        it = iterator()
        target = state_lib.unboxed_abstract(run.boxed, run.shardings)
        return ckpt.restore(manager, step, target, it), it

    # Uninterrupted on the FSDP mesh, saving after steps 1 and 2.
    saving = ckpt.make_manager(directory / "fsdp", config)
    it = iterator()
    state, straight = h.init(fsdp), []
    for i, batch in enumerate(data):
        state, (loss,) = h.train(fsdp, state, [batch])
        straight.append(loss)
        next(it)
        if i < 2:
            ckpt.save(saving, i + 1, state, it, meta, force=True)
    saving.wait_until_finished()

    # Step 2's checkpoint onto 2x2x2; one step; save from there.
    state, it = restore(saving, 2, cube)
    kernel_spec = state.params["block_stack"]["blocks"]["attention"]["query"]["kernel"].sharding.spec
    data_continued = int(next(it)) == 2
    state, (on_cube,) = h.train(cube, state, [data[2]])
    resaving = ckpt.make_manager(directory / "cube", config)
    ckpt.save(resaving, 3, state, it, meta, force=True)
    resaving.wait_until_finished()

    # Step 3's checkpoint (written from 2x2x2) onto one device.
    state, _ = restore(resaving, 3, one)
    devices = len(state.params["embed"]["embedding"].sharding.device_set)
    _, (on_one,) = h.train(one, state, [data[3]])

    control_state, _ = restore(saving, 1, cube)
    _, (control,) = h.train(cube, control_state, [data[2]])
    for manager in (saving, resaving):
        manager.close()
    return {
        "straight": straight,
        "on_2x2x2": on_cube,
        "on_one_device": on_one,
        "kernel_spec_on_2x2x2": list(kernel_spec),
        "devices_on_one_device": devices,
        "data_iterator_continued": data_continued,
        "control_from_step_1": control,
    }


if __name__ == "__main__":
    print(json.dumps(_child(pathlib.Path(sys.argv[1]))))
