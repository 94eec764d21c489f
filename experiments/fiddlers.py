"""Fiddlers: functions that mutate an experiment graph in place, applied with --fiddler=NAME."""

import fiddle as fdl


def bf16(cfg: fdl.Config) -> None:
    """Compute in bfloat16 (parameters and logits stay float32)."""
    cfg.model.config.dtype = "bfloat16"


def no_scan(cfg: fdl.Config) -> None:
    """Unroll the transformer blocks instead of nn.scan (slower compiles, per-block params)."""
    cfg.model.config.scan_blocks = False


def doc_masking(cfg: fdl.Config) -> None:
    """Attend only within each packed document."""
    cfg.model.config.mask_across_document_boundaries = True
