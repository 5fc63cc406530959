"""Config, grid and path naming of structured (llm-pruner) variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_compression.config import (
    ConfigError,
    expand_grid,
    load_config_file,
    pruning_calibration,
    pruning_options,
    validate_config,
)
from llm_compression.variants import Pruning, pruned_dir

ROOT = Path(__file__).resolve().parents[2]


def cfg(*entries, **cal):
    return {
        "model": {"name": "m", "source": "embedded:smollm2-135m"},
        "grid": {"dense": False, "pruning": list(entries)},
        "calibration": {"corpus": "lambada", **cal},
        "evaluation": {"perplexity": {"datasets": {"ptb": {"split": "test"}}}, "cost": False},
    }


def test_structured_entry_expands_one_variant_per_importance_and_round_trips():
    c = validate_config(cfg({"method": "llm-pruner", "level": "block", "ratios": [0.25, 0.5],
                             "importance": ["taylor", "random", "element2"], "layer_range": [2, -2],
                             "calibration": {"samples": 10, "seqlen": 128}}), check_model=False)
    vs = expand_grid(c)
    segs = [v.pruning.segment for v in vs]
    assert segs == ["llmpruner-element1_block_0.25_x1", "llmpruner-random_block_0.25_x1",
                    "llmpruner-element2_block_0.25_x1", "llmpruner-element1_block_0.5_x1",
                    "llmpruner-random_block_0.5_x1", "llmpruner-element2_block_0.5_x1"]
    for v in vs:
        assert Pruning.from_segment(v.pruning.segment) == v.pruning
    p = Pruning.from_segment("llmpruner-element2_block_0.5_x1")
    assert pruned_dir("m", p) == "m/pruned/llmpruner-element2_block_0.5_x1"
    assert pruning_options(c, p) == {"aggregation": "sum", "attention": "query_head", "layer_range": [2, -2],
                                     "snap": True, "seed": 0}
    cal = pruning_calibration(c, p)
    assert (cal["samples"], cal["seqlen"], cal["corpus"]) == (10, 128, "lambada")
    # the unstructured segments still parse as before
    assert Pruning.from_segment("wanda_2of4_0.5_x1") == Pruning("wanda", "2:4", 0.5, 1)


@pytest.mark.parametrize("entry,match", [
    ({"method": "llm-pruner", "level": "unstructured"}, "levels block, channel, layer need method 'llm-pruner'"),
    ({"method": "wanda", "level": "block"}, "levels block, channel, layer need method 'llm-pruner'"),
    ({"method": "wanda", "importance": "l1"}, "apply only to method 'llm-pruner'"),
    ({"method": "llm-pruner", "level": "channel", "importance": "hessian"}, "importance"),
    ({"method": "llm-pruner", "level": "block", "aggregation": "prod"}, "aggregation"),
    ({"method": "llm-pruner", "level": "block", "importance": "block-influence"},
     "importance 'block-influence' does not apply to level 'block'"),
    ({"method": "llm-pruner", "level": "layer", "importance": ["random", "activation"]},
     "importance 'activation' does not apply to level 'layer'"),
])
def test_bad_structured_entries_are_refused(entry, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg(entry), check_model=False)


def test_same_structured_variant_twice_is_refused():
    e1 = {"method": "llm-pruner", "level": "block", "importance": "taylor", "aggregation": "sum"}
    e2 = {"method": "llm-pruner", "level": "block", "importance": ["element1"], "aggregation": "max"}
    with pytest.raises(ConfigError, match="already in grid.pruning\\[0\\]"):
        validate_config(cfg(e1, e2), check_model=False)


def test_structured_calibration_on_evaluated_corpus_is_refused():
    e = {"method": "llm-pruner", "level": "block", "importance": "taylor", "calibration": {"corpus": "ptb"}}
    with pytest.raises(ConfigError, match="also an evaluation dataset"):
        validate_config(cfg(e), check_model=False)
    # random importance reads no calibration data, so it may name any corpus
    e = {"method": "llm-pruner", "level": "block", "importance": "random", "calibration": {"corpus": "ptb"}}
    validate_config(cfg(e), check_model=False)


def test_activation_criteria_expand_and_need_calibration():
    c = validate_config(cfg({"method": "llm-pruner", "level": "layer", "ratios": [0.25],
                             "importance": ["block-influence", "angular"]},
                            {"method": "llm-pruner", "level": "channel", "ratios": [0.2], "importance": "activation"}),
                        check_model=False)
    segs = [v.pruning.segment for v in expand_grid(c)]
    assert segs == ["llmpruner-block-influence_layer_0.25_x1", "llmpruner-angular_layer_0.25_x1",
                    "llmpruner-activation_channel_0.2_x1"]
    from llm_compression.prune import needs_calibration

    assert all(needs_calibration(Pruning.from_segment(seg).method) for seg in segs)  # forward passes over it
    assert not needs_calibration("llmpruner-random") and not needs_calibration("llmpruner-l2")
    # and so the evaluated corpus is refused as their calibration corpus
    e = {"method": "llm-pruner", "level": "layer", "importance": "angular", "calibration": {"corpus": "ptb"}}
    with pytest.raises(ConfigError, match="also an evaluation dataset"):
        validate_config(cfg(e), check_model=False)


def test_structured_study_config_validates():
    c = load_config_file(ROOT / "config" / "structured.yaml", check_model=False)
    segs = {v.pruning.segment for v in expand_grid(c)}
    assert "llmpruner-element1_block_0.5_x1" in segs and "llmpruner-random_channel_0.3_x1" in segs
    assert "llmpruner-element1_layer_0.25_x1" in segs
    assert "llmpruner-activation_channel_0.2_x1" in segs and "llmpruner-angular_layer_0.5_x1" in segs
    assert len(segs) == 33  # dense + (block, channel) x 4 ratios x 3 importances + layer x 2 ratios x 4
