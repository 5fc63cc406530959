"""variants is the only namer: rule patterns, wildcard constraints and evaluation names agree with it."""

import re

import pytest

from llm_compression.variants import (
    COST_EVALUATIONS,
    FIGURE_CONSTRAINTS,
    WILDCARD_CONSTRAINTS,
    Pruning,
    Variant,
    artifact_dir,
    demo_path,
    evaluation_kind,
    export_dir,
    healed_dir,
    metrics_path,
    parse_perplexity_evaluation,
    pattern,
    perplexity_dataset,
    perplexity_evaluation,
    pruned_dir,
)

PRUNINGS = [Pruning("dense"), Pruning("wanda", "unstructured", 0.5, 1), Pruning("sparsegpt", "2:4", 0.5, 1),
            Pruning("llmpruner-element1", "block", 0.25, 2), Pruning("magnitude", "unstructured", 0.875, 1)]


def _fill(pat: str, **wildcards) -> str:
    return pat.format(**wildcards)


@pytest.mark.parametrize("p", PRUNINGS[1:])
def test_patterns_give_the_paths_of_the_path_functions(p):
    v = Variant(p, "lora", "nf4")
    w = {"pruning": p.segment, "healing": "lora", "quant": "nf4", "evaluation": "ppl-ptb-sparsegpt"}
    assert _fill(pattern("pruned", "m"), **w) == pruned_dir("m", p)
    assert _fill(pattern("healed", "m"), **w) == healed_dir("m", p, "lora")
    assert _fill(pattern("quantized", "m"), **w) == artifact_dir("m", v)
    assert _fill(pattern("metrics", "m"), **w) == metrics_path("m", v, "ppl-ptb-sparsegpt")
    assert _fill(pattern("demo", "m"), **w) == demo_path("m", v)
    assert _fill(pattern("export", "m"), **w) == export_dir("m", v)
    with pytest.raises(ValueError, match="unknown stage 'exported'"):
        pattern("exported", "m")


@pytest.mark.parametrize("p", PRUNINGS)
def test_wildcard_constraints_accept_every_segment_and_round_trip(p):
    assert re.fullmatch(WILDCARD_CONSTRAINTS["pruning"], p.segment)
    assert Pruning.from_segment(p.segment) == p
    assert not re.fullmatch(WILDCARD_CONSTRAINTS["pruning"], "wanda/none")
    assert re.fullmatch(FIGURE_CONSTRAINTS["figure"], "perplexity_vs_parameters_ptb")


def test_importance_is_a_field_of_the_pruning_and_the_path_is_unchanged():
    p = Pruning.of("llm-pruner", "block", 0.5, 1, importance="element1")
    assert p.segment == "llmpruner-element1_block_0.5_x1"
    assert (p.importance, p.config_method) == ("element1", "llm-pruner")
    w = Pruning.of("wanda", "unstructured", 0.5)
    assert (w.importance, w.config_method) == (None, "wanda")
    with pytest.raises(ValueError, match="takes no importance"):
        Pruning.of("wanda", importance="l1")


def test_evaluation_names_are_built_and_parsed_in_one_place():
    name = perplexity_evaluation("wikitext2", "llm-pruner")
    assert name == "ppl-wikitext2-llm-pruner"
    assert parse_perplexity_evaluation(name) == ("wikitext2", "llm-pruner")
    assert parse_perplexity_evaluation("ppl-ptb", default_preset="sparsegpt") == ("ptb", "sparsegpt")
    assert perplexity_dataset(name) == "wikitext2"
    assert [evaluation_kind(n) for n in (name, "zeroshot", *COST_EVALUATIONS)] == [
        "perplexity", "zeroshot", *COST_EVALUATIONS]
    with pytest.raises(ValueError, match="unknown evaluation 'speed'"):
        evaluation_kind("speed")
    with pytest.raises(ValueError, match="ppl-<dataset>-<preset>"):
        parse_perplexity_evaluation("ppl-ptb-fast")


def test_planned_figures_are_the_drawn_figures():
    """planning names the figures (torch- and matplotlib-free); report.plots draws each of them."""
    from llm_compression.planning import FIGURES, PER_DATASET, figure_names
    from llm_compression.report import plots

    assert set(FIGURES) == set(plots.FIGURES)
    names = figure_names(["ppl-ptb-sparsegpt", "ppl-wikitext2-sparsegpt", "cost", "latency"])
    assert {n for n in names if not n.startswith(PER_DATASET)} == set(FIGURES)
    assert [n for n in names if n.startswith(PER_DATASET)] == [PER_DATASET + "ptb", PER_DATASET + "wikitext2"]
