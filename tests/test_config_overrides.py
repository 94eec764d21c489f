"""The override language: order, typed values, did-you-mean paths, tags, fiddlers, attribution."""

import pytest

import experiments
from llama_fdl.cli import ConfigError, diff, flatten, library, overrides, typecheck


def _apply(*texts, cfg=None):
    """Overrides as (kind, text) pairs, labelled as the launcher would."""
    todo = [overrides.Override(kind, text, f"<{kind} {text}>") for kind, text in texts]
    return overrides.apply(cfg or experiments.tiny(), todo, experiments)


def test_values_win_over_fiddlers_whatever_the_order_given():
    applied = _apply(("set", "model.config.dtype='float16'"), ("fiddler", "bf16"))
    assert applied.cfg.model.config.dtype == "float16"
    assert applied.sources["model.config.dtype"] == ["<fiddler bf16>", "<set model.config.dtype='float16'>"]
    # Control: the fiddler alone does change it, so the order above is what kept float16.
    assert _apply(("fiddler", "bf16")).cfg.model.config.dtype == "bfloat16"


def test_the_last_of_two_values_wins():
    applied = _apply(("set", "model.config.num_blocks=3"), ("set", "model.config.num_blocks=5"))
    assert applied.cfg.model.config.num_blocks == 5


def test_values_are_parsed_by_the_annotation_they_set():
    cfg = _apply(
        ("set", "model.config.dtype=bfloat16"),  # a bare word where only strings are allowed
        ("set", "model.config.theta=5e5"),
        ("set", "model.config.qk_norm=true"),
        ("set", "model.config.logits_soft_cap=None"),
        ("set", "data.source.root=''"),
        ("set", "optimizer.peak_learning_rate=1"),  # an int where a float is annotated
    ).cfg
    assert cfg.model.config.dtype == "bfloat16" and cfg.model.config.theta == 5e5
    assert cfg.model.config.qk_norm is True and cfg.model.config.logits_soft_cap is None
    assert cfg.optimizer.peak_learning_rate == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("model.config.num_block=3", "has no parameter `num_block`; did you mean `num_blocks`"),
        ("model.confg.num_blocks=3", "has no parameter `confg`; did you mean `config`"),
        ("model.config.num_blocks.x=3", "`model.config.num_blocks` is 2, not a config"),
        ("model.config.num_blocks=eight", "`eight` is not an int, which this setting takes (it is 2 now)"),
        ("model.config.num_blocks='eight'", "LlamaConfig.num_blocks takes an int, not a str"),
        ("model.config.num_blocks=2.5", "LlamaConfig.num_blocks takes an int, not a float"),
        ("model.config.qk_norm=1", "LlamaConfig.qk_norm takes True or False, not an int"),
        ("model.config.attention_backend=flsh", "takes one of 'xla', 'pallas_triton', 'cudnn'"),
        ("model.config.num_blocks", "needs a value"),
        ("model..num_blocks=3", "not a dotted path"),
    ],
)
def test_a_bad_value_or_path_is_named_with_the_fix(text, message):
    with pytest.raises(ConfigError) as e:
        _apply(("set", text))
    assert message in str(e.value)
    assert str(e.value).startswith(f"<set {text}>")
    assert "\n" not in str(e.value)


def test_a_literal_typo_suggests_the_nearest_option():
    with pytest.raises(ConfigError, match="nearest to 'cudn': 'cudnn'"):
        _apply(("set", "model.config.attention_backend=cudn"))


def test_a_wrong_type_set_by_code_is_caught_before_building():
    cfg = experiments.tiny()
    cfg.model.config.num_blocks = "eight"
    with pytest.raises(
        ConfigError, match=r"model.config.num_blocks='eight': LlamaConfig.num_blocks takes an int"
    ):
        typecheck.check_graph(cfg)
    typecheck.check_graph(experiments.tiny())  # control: the library's own graph passes


def test_a_wrong_type_from_a_fiddler_names_the_fiddler(monkeypatch):
    def broken(cfg):
        cfg.data.batch_size = "16"

    monkeypatch.setattr(experiments, "broken", broken, raising=False)
    monkeypatch.setattr(experiments, "FIDDLERS", (*experiments.FIDDLERS, "broken"))
    with pytest.raises(ConfigError, match=r"data.batch_size='16' \(set by <fiddler broken>\)"):
        _apply(("fiddler", "broken"))


def test_a_tag_sets_every_value_it_marks_and_a_wrong_name_lists_the_tags():
    assert _apply(("tag", "DType=bfloat16")).cfg.model.config.dtype == "bfloat16"
    assert _apply(("tag", "llama_fdl.builders.DType=float16")).cfg.model.config.dtype == "float16"
    with pytest.raises(ConfigError, match="no tag `dtype`; tags: DType"):
        _apply(("tag", "dtype=bfloat16"))


def test_fiddlers_take_literal_arguments_and_bad_ones_show_the_signature():
    cfg = _apply(("fiddler", "long_context(128)"), ("fiddler", "fsdp(size=1)")).cfg
    assert (cfg.data.sequence_length, cfg.data.batch_size) == (128, 4)  # 8 x 64 tokens kept
    assert cfg.model.config.parallel.fsdp_axis_size == 1
    with pytest.raises(
        ConfigError,
        match=r"unexpected keyword argument 'length'; it takes long_context\(sequence_length: int = 1024\)",
    ):
        _apply(("fiddler", "long_context(length=128)"))
    with pytest.raises(ConfigError, match="needs literal arguments"):
        _apply(("fiddler", "long_context(big)"))


def test_unknown_names_list_the_library_nearest_first():
    with pytest.raises(ConfigError, match=r"Unknown experiment 'experiments.smal'; available: small, "):
        library.experiment("experiments.smal", experiments)
    with pytest.raises(ConfigError, match=r"Unknown fiddler 'bf61'; available: bf16, "):
        _apply(("fiddler", "bf61"))


def test_flags_are_labelled_as_typed():
    argv = ["--fdl.model.config.num_blocks=3", "--fdl_set=data.seed=1", "--fdl_tag.DType=float16"]
    rewritten = overrides.rewrite_shorthands(argv)
    assert rewritten == [
        "--fdl_set=model.config.num_blocks=3",
        "--fdl_set=data.seed=1",
        "--fdl_tags_set=DType=float16",
    ]
    todo = overrides.from_flags(
        ["bf16"], ["DType=float16"], ["model.config.num_blocks=3", "data.seed=1"], argv
    )
    assert [o.label for o in todo] == [
        "--fiddler=bf16",
        "--fdl_tag.DType=float16",
        "--fdl.model.config.num_blocks=3",
        "--fdl_set=data.seed=1",
    ]


def test_the_diff_names_each_change_and_the_flag_that_made_it():
    applied = overrides.apply(
        experiments.small(),
        overrides.from_flags(
            ["bf16"], [], ["model.config.num_blocks=8"], ["--fdl.model.config.num_blocks=8"]
        ),
        experiments,
    )
    text = diff.as_text(applied.base, applied.cfg, applied.sources, against="experiments.small")
    assert text.splitlines() == [
        "# What this run changed against experiments.small.",
        "model.config.num_blocks: 4 -> 8   (--fdl.model.config.num_blocks=8)",
        "model.config.dtype: 'float32' -> 'bfloat16'   (--fiddler=bf16)",
    ]
    assert diff.as_text(applied.cfg, applied.cfg).splitlines() == ["(no changes)"]  # control


def test_a_shared_node_is_listed_once_and_its_change_shows_once():
    cfg = experiments.tiny()
    text = flatten.as_text(cfg)
    assert "mesh.parallel = <same as model.config.parallel>" in text
    assert "mesh.parallel.data_axis_size" not in text
    assert "0x" not in text, "memory addresses would make identical graphs print differently"
    applied = _apply(("set", "mesh.parallel.data_axis_size=1"))
    assert [c.path for c in diff.changes(applied.base, applied.cfg)] == [
        "model.config.parallel.data_axis_size"
    ]


# Three overrides of one setting, one of each kind, each giving model.config.dtype its own value.
_ONE_OF_EACH = {"fiddler": "bf16", "tag": "DType=float16", "set": "model.config.dtype='float32'"}
_VALUE_OF = {"fiddler": "bfloat16", "tag": "float16", "set": "float32"}
_PAIRS = [("fiddler", "tag"), ("fiddler", "set"), ("tag", "set")]


def _order_is_kept(first: str, second: str) -> bool:
    """Whether `second` (documented as applied later) wins, whichever of the two is given first."""
    return all(
        _apply(*((kind, _ONE_OF_EACH[kind]) for kind in given)).cfg.model.config.dtype == _VALUE_OF[second]
        for given in ((first, second), (second, first))
    )


@pytest.mark.parametrize("first, second", _PAIRS)
def test_each_kind_wins_over_the_kinds_documented_before_it_whatever_the_order_given(first, second):
    assert _order_is_kept(first, second)


@pytest.mark.parametrize("swapped", _PAIRS)
def test_control_swapping_any_two_kinds_in_the_order_is_noticed(monkeypatch, swapped):
    a, b = swapped
    order = dict(overrides._ORDER)
    order[a], order[b] = order[b], order[a]
    monkeypatch.setattr(overrides, "_ORDER", order)
    assert not _order_is_kept(a, b)


def test_long_context_keeps_the_tokens_per_batch_or_refuses():
    cfg = _apply(("fiddler", "long_context(256)")).cfg  # tiny: 8 x 64 = 512 tokens
    assert (cfg.data.batch_size, cfg.data.sequence_length) == (2, 256)
    for length in (1024, 100):  # longer than a batch, and not a divisor of it
        with pytest.raises(ConfigError) as e:
            _apply(("fiddler", f"long_context({length})"))
        assert str(e.value) == (
            f"<fiddler long_context({length})>: long_context({length}) cannot keep the 512 tokens "
            "per batch (8 x 64); pick a sequence_length that divides them: 128, 256, 512."
        )
