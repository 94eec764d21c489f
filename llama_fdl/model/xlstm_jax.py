"""xlstm-jax's `ParallelConfig` keywords, turned into llama_fdl's `ParallelConfig`.

A config written for xlstm-jax (`xlstm_jax.models.configs.ParallelConfig(...)` in code, or the
keyword set of its `configs/parallel/*.yaml`) ports by calling `parallel_config(**keywords)`
instead: the same keywords and defaults, returning the one `ParallelConfig` that the model and
the mesh share. Nothing here is stored: every setting keeps its single home in `ParallelConfig`.

What maps: the axis names and sizes (xlstm-jax's model axis is the tensor axis), the minimum
FSDP weight size, and the `remat` list of module names (see `REMAT_BY_MODULES`). What cannot
map is refused with one sentence: a pipeline axis, asynchronous tensor-parallel matmuls, a
separate gather or gradient-scatter dtype, and an `fsdp_modules` list that leaves part of the
model whole while the fsdp axis is in use (llama_fdl shards every weight of at least
`fsdp_min_weight_size` elements over it).
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_fdl.model.config import ParallelConfig, RematPolicy

MODULE_NAMES = ("Embed", "BlockStack", "TransformerBlock", "AttnBlock", "FFNBlock", "LMHead")
"""The module names xlstm-jax's Llama passes to its remat and FSDP wrappers."""

REMAT_BY_MODULES: dict[frozenset[str], RematPolicy] = {
    frozenset(): "none",
    frozenset({"TransformerBlock"}): "full",
    frozenset({"AttnBlock"}): "attention",
    frozenset({"FFNBlock"}): "ffn",
    frozenset({"AttnBlock", "FFNBlock"}): "attention_and_ffn",
}
"""xlstm-jax remat lists (as sets) -> `ParallelConfig.remat`. A list with "TransformerBlock" and
sub-blocks is "full": the outer remat already recomputes everything inside it."""

_WHOLE_MODEL = ({"Embed", "LMHead", "TransformerBlock"}, {"Embed", "LMHead", "BlockStack"})


def parallel_config(
    *,
    data_axis_size: int = -1,
    fsdp_axis_size: int = 1,
    pipeline_axis_size: int = 1,
    model_axis_size: int = 1,
    data_axis_name: str = "dp",
    fsdp_axis_name: str = "fsdp",
    pipeline_axis_name: str = "pp",
    model_axis_name: str = "tp",
    remat: Sequence[str] = (),
    fsdp_modules: Sequence[str] = (),
    fsdp_min_weight_size: int = 2**18,
    fsdp_gather_dtype: str | None = None,
    fsdp_grad_scatter_dtype: str | None = None,
    tp_async_dense: bool = False,
) -> ParallelConfig:
    """llama_fdl's ParallelConfig for xlstm-jax's ParallelConfig keywords (same names, same
    defaults); raises ValueError in one sentence for what llama_fdl does not do."""
    del pipeline_axis_name  # names an axis of size 1, which llama_fdl's mesh does not have
    block_remat = remat_from_modules(remat)
    _check_fsdp_modules(fsdp_modules, fsdp_axis_size)
    if pipeline_axis_size != 1:
        raise ValueError(
            f"pipeline_axis_size={pipeline_axis_size}: llama_fdl has no pipeline parallelism; set "
            "pipeline_axis_size=1 and give those devices to the data, fsdp or model axis."
        )
    if tp_async_dense:
        raise ValueError(
            "tp_async_dense=True: llama_fdl's tensor-parallel matmuls are XLA's, not asynchronous "
            "ppermute loops; set tp_async_dense=False."
        )
    for name, value in (
        ("fsdp_gather_dtype", fsdp_gather_dtype),
        ("fsdp_grad_scatter_dtype", fsdp_grad_scatter_dtype),
    ):
        if value is not None:
            raise ValueError(
                f"{name}={value!r}: llama_fdl has no separate FSDP communication dtype (weights are "
                "cast to LlamaConfig.dtype where they are used, gradients stay float32); set "
                f"{name}=None and choose the compute dtype with LlamaConfig.dtype."
            )
    return ParallelConfig(
        data_axis_name=data_axis_name,
        fsdp_axis_name=fsdp_axis_name,
        tensor_axis_name=model_axis_name,
        data_axis_size=data_axis_size,
        fsdp_axis_size=fsdp_axis_size,
        tensor_axis_size=model_axis_size,
        fsdp_min_weight_size=fsdp_min_weight_size,
        remat=block_remat,
    )


def remat_from_modules(modules: Sequence[str]) -> RematPolicy:
    """`ParallelConfig.remat` for an xlstm-jax list of module names to rematerialize."""
    names = set(_known(modules, "remat"))
    outside_blocks = sorted(names & {"Embed", "BlockStack", "LMHead"})
    if outside_blocks:
        raise ValueError(
            f"remat={list(modules)}: llama_fdl rematerializes within transformer blocks only, not "
            f"{', '.join(outside_blocks)}; use TransformerBlock, AttnBlock and/or FFNBlock."
        )
    if "TransformerBlock" in names:
        return "full"
    return REMAT_BY_MODULES[frozenset(names)]


def _check_fsdp_modules(modules: Sequence[str], fsdp_axis_size: int) -> None:
    names = set(_known(modules, "fsdp_modules"))
    if fsdp_axis_size == 1:
        return  # no fsdp axis: nothing is sharded whatever the list says
    if names == {"Embed", "LMHead", "AttnBlock", "FFNBlock"} or any(m <= names for m in _WHOLE_MODEL):
        return
    raise ValueError(
        f"fsdp_modules={list(modules)} with fsdp_axis_size={fsdp_axis_size}: llama_fdl shards every "
        "weight of at least fsdp_min_weight_size elements over the fsdp axis, so list the whole "
        "model (Embed, LMHead, TransformerBlock), or set fsdp_axis_size=1."
    )


def _known(modules: Sequence[str], setting: str) -> Sequence[str]:
    if isinstance(modules, str):
        raise ValueError(f"{setting}={modules!r} must be a list of module names, e.g. [{modules!r}].")
    unknown = [m for m in modules if m not in MODULE_NAMES]
    if unknown:
        raise ValueError(
            f"{setting} names {unknown}, which xlstm-jax's Llama does not have; its module names "
            f"are {', '.join(MODULE_NAMES)}."
        )
    return modules
