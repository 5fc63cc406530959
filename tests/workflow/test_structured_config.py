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


def test_structured_study_config_validates():
    c = load_config_file(ROOT / "config" / "structured.yaml", check_model=False)
    segs = {v.pruning.segment for v in expand_grid(c)}
    assert "llmpruner-element1_block_0.5_x1" in segs and "llmpruner-random_channel_0.3_x1" in segs
    assert "llmpruner-element1_layer_0.25_x1" in segs
    assert len(segs) == 21  # dense + (block, channel) x 4 ratios x 2 importances + layer x 2 ratios x 2
