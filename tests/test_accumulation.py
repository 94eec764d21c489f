"""Gradient accumulation over k microbatches equals one big batch, and gathers FSDP params once.

On an 8-way FSDP mesh (8 simulated CPU devices), a 32-row batch as 4 microbatches of 8 gives the
loss and gradient of the 32-row batch in one go, and the same losses over a few real train steps.
Tolerances fixed in advance (float32): losses rtol 1e-5; gradients |g - g_ref| <= 1e-6 + 1e-4 |g_ref|.
Control: a big batch with one row's loss weights dropped fails the same checks.

Gathering: in the compiled HLO of the accumulated gradient, no floating-point all-gather sits
inside the microbatch loop (the parameters are gathered before it); with gather_once=False, the
control, the per-layer all-gathers are inside it, repeated for every microbatch.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest

K = 4
ROWS = 32
NUM_STEPS = 2
LOSS_RTOL = 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def measured(run_on_cpu_devices):
    return run_on_cpu_devices(pathlib.Path(__file__))


def test_accumulated_gradient_and_losses_equal_one_big_batch(measured):
    assert measured["grad_excess"] <= 1.0, measured
    assert measured["loss_excess"] <= 1.0, measured


def test_control_a_dropped_row_is_noticed(measured):
    assert measured["control_grad_excess"] > 1.0 and measured["control_loss_excess"] > 1.0, measured


def test_fsdp_parameters_are_gathered_once_not_per_microbatch(measured):
    once, per_microbatch = measured["gathers"]["once"], measured["gathers"]["per_microbatch"]
    assert once["outside_loops"] > 0 and once["inside_loops"] == 0, once
    # Control: left to the compiler, every layer's weights are gathered inside the loop.
    assert per_microbatch["inside_loops"] > 0, per_microbatch


def test_a_batch_that_does_not_split_is_refused():
    import fiddle as fdl

    import experiments

    cfg = experiments.tiny()
    cfg.trainer.num_microbatches = 3
    with pytest.raises(ValueError, match="num_microbatches=3"):
        fdl.build(cfg).validate()


def float_all_gathers(hlo: str) -> dict[str, int]:
    """Floating-point all-gathers outside any loop vs. inside the loops the ENTRY computation runs.

    `hlo` is compiled HLO text: computations `%name (...) -> ... {` ... `}`. Loops are `while`
    ops naming their `body=`; whatever a loop body calls (nested layer loops too) is inside.
    """
    calls, loops, gathers = {}, {}, {}
    name = None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            name = "ENTRY" if header.group(1) else header.group(2)
            calls[name], loops[name], gathers[name] = [], [], 0
        elif name:
            calls[name] += re.findall(r"(?:body|condition|calls|to_apply)=%?([\w.\-]+)", line)
            loops[name] += re.findall(r"body=%?([\w.\-]+)", line)
            gathers[name] += bool(re.search(r"= f(16|32|64)\[.*all-gather(-start)?\(", line))
    inside, stack = set(), list(loops["ENTRY"])
    while stack:
        computation = stack.pop()
        if computation not in inside:
            inside.add(computation)
            stack += calls.get(computation, [])
    return {"outside_loops": gathers["ENTRY"], "inside_loops": sum(gathers.get(c, 0) for c in inside)}


def _child() -> dict:
    import functools

    import jax
    import numpy as np

    from llama_fdl import sharding
    from llama_fdl.train.step import loss_and_grads
    from tests import sharded_harness as h

    data = h.batches(NUM_STEPS, batch=ROWS)
    big, acc = h.setup((1, 8, 1)), h.setup((1, 8, 1), num_microbatches=K)
    initial = h.init(big)

    _, big_grads = h.grads_at(big, initial, data[0])
    _, big_losses = h.train(big, initial, data)

    compiled = {}
    for name, once in (("once", True), ("per_microbatch", False)):
        fn = functools.partial(
            loss_and_grads, model=acc.model, mesh=acc.mesh, num_microbatches=K, gather_once=once
        )
        jitted = jax.jit(
            fn, in_shardings=(acc.shardings.params, acc.batch_sharding, sharding.replicated(acc.mesh))
        )
        compiled[name] = jitted.lower(initial.params, acc.put(data[0]), jax.random.key(0)).compile()

    def measure(batches):
        _, _, grads = compiled["once"](initial.params, acc.put(batches[0]), jax.random.key(0))
        flat = {jax.tree_util.keystr(p): np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads)}
        _, losses = h.train(acc, initial, batches)
        return (
            h.grad_excess(flat, big_grads, GRAD_RTOL, GRAD_ATOL),
            h.loss_excess(losses, big_losses, LOSS_RTOL),
        )

    grad_excess, loss_excess = measure(data)
    keep = (np.arange(ROWS) != 5)[:, None]
    dropped = [dict(b, decoder_loss_weights=b["decoder_loss_weights"] * keep) for b in data]
    control_grad_excess, control_loss_excess = measure(dropped)
    return {
        "grad_excess": grad_excess,
        "loss_excess": loss_excess,
        "control_grad_excess": control_grad_excess,
        "control_loss_excess": control_loss_excess,
        "gathers": {name: float_all_gathers(c.as_text()) for name, c in compiled.items()},
    }


if __name__ == "__main__":
    print(json.dumps(_child()))
