"""The study's figures on synthetic tables (tests/report/report_synthetic.py): each renders, bubble area
follows GMACs, perplexity axes go logarithmic past a 10x span, labels stay inside their axes without
overlapping, timings claim no difference inside their spread, edge cases draw a note instead of failing,
and each figure's planned inputs are only the evaluations it draws."""

import itertools
from pathlib import Path
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.text import Annotation, Text
from report_synthetic import write_study_metrics, study_variants

from llm_compression.planning import FIGURE_READS, PER_DATASET, figure_evaluations, figure_names
from llm_compression.report import plots
from llm_compression.report.table import build_table
from llm_compression.variants import Pruning, Variant

EVALUATIONS = ["ppl-ptb-sparsegpt", "ppl-wikitext2-sparsegpt", "zeroshot", "cost", "memory", "latency"]
FIGURES = figure_names(EVALUATIONS)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tidy table of a small study grid: every family, x1/x2 and one-shot twins, LoRA, NF4-DQ."""
    return build_table(write_study_metrics(tmp_path_factory.mktemp("study"), study_variants(small=True)))


def _table(tmp_path, variants, evaluations=("ppl-ptb-sparsegpt", "cost", "memory", "latency")):
    return build_table(write_study_metrics(tmp_path, variants, evaluations=evaluations))


def _annotations(fig):
    return [(ax, t) for ax in fig.axes for t in ax.texts if isinstance(t, Annotation)]


def assert_labels_inside_and_apart(fig):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    by_ax = {}
    for ax, t in _annotations(fig):
        box = Text.get_window_extent(t, r)  # the text itself, without its leader line
        axbox = ax.get_window_extent(r)
        assert axbox.x0 - 0.5 <= box.x0 and box.x1 <= axbox.x1 + 0.5, (t.get_text(), box, axbox)
        assert axbox.y0 - 0.5 <= box.y0 and box.y1 <= axbox.y1 + 0.5, (t.get_text(), box, axbox)
        by_ax.setdefault(id(ax), []).append((t.get_text(), box))
    # clear space between labels (half the placement gap: the drawn text box may differ from the probe's by
    # a pixel), so two labels never read as one
    gap = plots.LABEL_GAP_PT * fig.dpi / 72.0 / 2
    for labels in by_ax.values():
        for (ta, a), (tb, b) in itertools.combinations(labels, 2):
            assert plots._overlap(a.padded(gap), b) < 1.0, (ta, tb)


@pytest.mark.parametrize("figure", FIGURES)
def test_each_study_figure_renders_with_labels_inside_and_apart(study, tmp_path, figure):
    fig = plots.build(figure, study)
    try:
        assert_labels_inside_and_apart(fig)
        for ax in fig.axes:
            if ax.axison and (ax.collections or ax.lines or ax.patches):
                assert ax.get_xlabel() or ax.get_ylabel(), f"{figure}: an axis without its label"
    finally:
        plt.close(fig)
    out = tmp_path / f"{figure}.png"
    plots.draw(figure, study, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


def test_bubble_area_is_proportional_to_gmacs(study):
    w = plots.wide(study)
    gmacs = {(round(r.nonzero_parameters / 1e6, 6), round(r.ppl_ptb, 6)): r.gmacs for _, r in w.iterrows()}
    fig = plots.build(PER_DATASET + "ptb", study)
    try:
        ratios, sizes_by_gmacs = [], {}
        for ax in fig.axes:
            for c in ax.collections:
                if isinstance(c, PathCollection) and c.get_gid() == "bubbles":
                    sizes = c.get_sizes()
                    offsets = c.get_offsets()
                    assert len(sizes) == len(offsets)
                    for (x, y), s in zip(offsets, sizes):
                        g = gmacs[(round(float(x), 6), round(float(y), 6))]
                        ratios.append(s / g)
                        sizes_by_gmacs.setdefault(round(g, 3), set()).add(round(float(s), 6))
        assert len(ratios) == len(w)  # every variant drawn once
        assert np.allclose(ratios, plots.MAX_BUBBLE_AREA / w.gmacs.max())
        # unstructured variants share the dense GMACs, hence one bubble size; structured ones are smaller
        dense_g = round(w[w.method == "dense"].gmacs.iloc[0], 3)
        assert len(sizes_by_gmacs[dense_g]) == 1
        assert max(sizes_by_gmacs) == dense_g and len(sizes_by_gmacs) > 1
        # the size key names the smallest and the largest bubble drawn (their GMACs)
        key = [t.get_text() for leg in fig.axes[-1].get_children() if isinstance(leg, plt.matplotlib.legend.Legend)
               for t in leg.get_texts() if t.get_text().endswith("GMACs")]
        assert 2 <= len(key) <= 3, key
        assert key[0] == f"{w.gmacs.min():.3g} GMACs" and key[-1] == f"{w.gmacs.max():.3g} GMACs", key
    finally:
        plt.close(fig)


def test_size_key_values_are_round_and_in_range():
    # the key names the bubbles the plot draws: its smallest and largest GMACs, a round one between
    # them only when they span more than a factor of 3
    assert plots.size_key_values(52.9, 77.913) == [52.9, 77.913]
    assert plots.size_key_values(77.9, 77.9) == [77.9] == plots.size_key_values(76.0, 77.9)
    assert plots.size_key_values(5.0, 80.0) == [5.0, 50.0, 80.0]
    assert all(10.0 <= v <= 43.5 for v in plots.size_key_values(10.0, 43.5))


def test_log_scale_only_past_a_tenfold_span(tmp_path, study):
    assert plots.wants_log([75.0, 751.0]) and not plots.wants_log([75.0, 749.0])
    assert not plots.wants_log([75.0, float("inf"), float("nan")])  # non-finite values do not count
    fig = plots.build(PER_DATASET + "ptb", study)  # 75 .. 10,000: log
    assert fig.axes[0].get_yscale() == "log" and "log scale" in fig.axes[0].get_ylabel()
    plt.close(fig)
    narrow = _table(tmp_path, [Variant(Pruning("dense")), Variant(Pruning("wanda", ratio=0.5))])  # 75 .. 165
    for name in (PER_DATASET + "ptb", "perplexity_vs_nonzero", "perplexity_vs_ratio"):
        fig = plots.build(name, narrow)
        assert fig.axes[0].get_yscale() == "linear", name
        plt.close(fig)


def test_memory_and_cost_axes_start_at_zero(study):
    fig = plots.build("cost_vs_ratio", study)
    try:
        drawn = [ax for ax in fig.axes if ax.axison]
        assert len(drawn) == 6
        assert all(ax.get_ylim()[0] == 0 for ax in drawn)
        assert any("peak forward memory (MB)" == ax.get_ylabel() for ax in drawn)
    finally:
        plt.close(fig)
    fig = plots.build("quantization_effect", study)
    try:
        mem = [ax for ax in fig.axes if "memory (MB)" in ax.get_xlabel()]
        assert len(mem) == 2 and all(ax.get_xlim()[0] == 0 for ax in mem)
        # log-scale perplexity bars run from 1 (length = log ppl, the cross-entropy), not from the axis edge
        ppl = [ax for ax in fig.axes if "bars from 1" in ax.get_xlabel()]
        assert ppl and all(ax.get_xscale() == "log" and ax.get_xlim()[0] == 1 for ax in ppl)
        w = plots.wide(study)
        for ax in ppl:
            bars = [p for p in ax.patches if p.get_width() > 0]
            assert bars and all(p.get_x() == 1 for p in bars)
            col = next(c for c in plots.ppl_columns(w) if plots._dataset_of(study, c) in ax.get_xlabel())
            ends = sorted(round(p.get_x() + p.get_width(), 6) for p in bars)
            assert ends == sorted(round(v, 6) for v in w[col].dropna() if np.isfinite(v))
    finally:
        plt.close(fig)


def test_step_lines_are_avoided_as_drawn():
    """A Pareto front is a step line: its samples follow the corners that are drawn, not the diagonal
    between its vertices."""
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.step([0, 2], [0, 2], where="post")
    ax.set_xlim(-0.5, 2.5)
    ax.set_ylim(-0.5, 2.5)
    fig.canvas.draw()
    pts = ax.transData.inverted().transform(plots._line_samples(ax))
    corner = np.array([2.0, 0.0])  # steps-post: (0,0) -> (2,0) -> (2,2)
    assert np.min(np.hypot(*(pts - corner).T)) < 0.02
    assert np.min(np.hypot(*(pts - np.array([1.0, 1.0])).T)) > 0.5  # nothing on the diagonal
    plt.close(fig)


def test_line_figures_name_dense_once(study):
    """The dense model is a star in the sparsity figures: one legend entry (the star), not also a dot."""
    fig = plots.build("perplexity_vs_ratio", study)
    try:
        labels = [t.get_text() for leg in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
                  for t in leg.get_texts()]
        labels += [t.get_text() for ax in fig.axes for a in ax.artists if hasattr(a, "get_texts")
                   for t in a.get_texts()]
        assert "dense (0%)" in labels and "dense" not in labels
    finally:
        plt.close(fig)


def test_repeated_pruning_sits_at_its_measured_sparsity(study):
    w = plots.wide(study).set_index("variant")
    # unstructured: the zeros counted in the artifact; x2 at 0.5 -> 0.75, next to the one-shot 0.75
    assert w.loc["sparsegpt_unstructured_0.5_x2", "measured_sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert w.loc["sparsegpt_unstructured_0.75_x1", "measured_sparsity"] == pytest.approx(0.75, abs=1e-3)
    # a quantized variant takes its unquantized twin's value (NF4's own zeros do not move it)
    assert (w.loc["sparsegpt_unstructured_0.5_x2+nf4-dq", "measured_sparsity"]
            == w.loc["sparsegpt_unstructured_0.5_x2", "measured_sparsity"])
    # structured: the fraction of the dense prunable weights removed
    blk = w.loc["llmpruner-element1_block_0.25_x1"]
    assert blk.measured_sparsity == pytest.approx(1 - blk.prunable_weights / w.loc["dense", "prunable_weights"])
    assert w.loc["dense", "measured_sparsity"] < 0.001
    fig = plots.build("perplexity_vs_ratio", study)
    try:
        xs = {round(float(x), 4) for ax in fig.axes[:1] for c in ax.collections for x, _ in c.get_offsets()}
        assert round(w.loc["sparsegpt_unstructured_0.5_x2", "measured_sparsity"], 4) in xs
    finally:
        plt.close(fig)


def test_timing_claims_nothing_inside_the_spread():
    w = pd.DataFrame({
        "variant": ["dense", "a", "b", "c", "dense+nf4-dq", "d"],
        "method": ["dense", "wanda", "wanda", "wanda", "dense", "wanda"],
        "quant": ["none", "none", "none", "none", "nf4-dq", "nf4-dq"],
        "decode_tokens_per_second_median": [16.0, 17.0, 20.0, 12.0, 24.0, 23.0],
        "decode_tokens_per_second_min": [14.0, 15.5, 18.1, 11.0, 22.0, 21.0],
        "decode_tokens_per_second_max": [18.0, 18.5, 21.0, 13.9, 26.0, 24.0],
    })
    v = plots.timing_verdicts(w, "decode_tokens_per_second_median")
    assert v == {"a": "within spread", "b": "faster", "c": "slower", "d": "within spread"}
    lat = w.rename(columns=lambda c: c.replace("decode_tokens_per_second", "prefill_seconds"))
    assert plots.timing_verdicts(lat, "prefill_seconds_median")["b"] == "slower"  # more seconds is slower
    assert plots.timing_verdicts(w.drop(columns=["decode_tokens_per_second_min"]),
                                 "decode_tokens_per_second_median")["b"] == "no spread"


def test_only_dense_draws_every_figure_with_a_note(tmp_path):
    df = _table(tmp_path, [Variant(Pruning("dense")), Variant(Pruning("dense"), quant="nf4-dq")],
                evaluations=("ppl-ptb-sparsegpt", "cost", "memory", "latency"))
    for name in figure_names(["ppl-ptb-sparsegpt", "cost", "memory", "latency"]):
        fig = plots.build(name, df)
        texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
        if name in (PER_DATASET + "ptb", "perplexity_vs_ratio"):
            assert "only the dense model" in texts, name
        assert_labels_inside_and_apart(fig)
        plt.close(fig)
        plots.draw(name, df, tmp_path / f"{name}.png")


def test_non_finite_perplexity_is_named_not_drawn(tmp_path):
    variants = [Variant(Pruning("dense")), Variant(Pruning("magnitude", ratio=0.5)),
                Variant(Pruning("llmpruner-element1", "block", 0.6))]
    df = _table(tmp_path, variants)
    df.loc[(df.variant == "magnitude_unstructured_0.5_x1") & (df.metric == "perplexity"), "value"] = math.inf
    df.loc[(df.variant == "llmpruner-element1_block_0.6_x1") & (df.metric == "perplexity"), "value"] = math.nan
    for name in (PER_DATASET + "ptb", "perplexity_vs_nonzero", "perplexity_vs_ratio", "quantization_effect", "pareto"):
        fig = plots.build(name, df)
        texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts) + fig.get_suptitle()
        assert "not finite: magnitude 50%" in texts, name
        for ax in fig.axes:
            for c in ax.collections:
                assert np.isfinite(np.asarray(c.get_offsets(), dtype=float)).all(), name
        plt.close(fig)


def test_missing_dataset_draws_a_note(study):
    fig = plots.build(PER_DATASET + "c4", study)
    assert "no c4 perplexity" in " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    plt.close(fig)


def test_labels_never_overlap_even_when_points_coincide():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.scatter([1.0] * 12 + [2.0], [1.0] * 12 + [2.0])
    ax.set_xlim(0, 3)
    ax.set_ylim(0, 3)
    placed = plots.place_labels(ax, [(1.0, 1.0, f"label {i}", 3.0) for i in range(12)] + [(2.0, 2.0, "x", 3.0)])
    assert len(placed) >= 10  # room for most; a label with no room inside the axes is left out, not clipped
    assert_labels_inside_and_apart(fig)
    plt.close(fig)


def test_labels_keep_off_drawn_lines_when_there_is_room():
    """A point on a horizontal line: its label goes beside the line, not across it (the first direction
    tried, straight right, would sit on the line)."""
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 3], [1.5, 1.5], "-", color="k")
    ax.scatter([1.0], [1.5])
    ax.set_xlim(0, 3)
    ax.set_ylim(0, 3)
    (ann,) = plots.place_labels(ax, [(1.0, 1.5, "50% x2", 3.0)])
    fig.canvas.draw()
    box = Text.get_window_extent(ann, fig.canvas.get_renderer())
    _, line_y = ax.transData.transform((1.0, 1.5))
    assert not (box.y0 <= line_y <= box.y1), (box, line_y)
    (ann_plain,) = plots.place_labels(ax, [(1.0, 1.5, "50% x2", 3.0)], avoid_lines=False)
    assert ann_plain.get_position()[1] == 0  # without line avoidance: straight right, on the line
    plt.close(fig)


def test_family_colours_and_names():
    assert plots.family_of("sparsegpt", "unstructured") == "SparseGPT"
    assert plots.family_of("sparsegpt", "2:4") == "SparseGPT 2:4"
    assert plots.family_of("llmpruner-element1", "block") == "LLM-Pruner block"
    assert plots.family_of("llmpruner-random", "channel", "random") == "LLM-Pruner channel (random)"
    colors = plots.family_colors(["dense", "SparseGPT", "SparseGPT 2:4", "LLM-Pruner channel (random)"])
    assert colors["SparseGPT"] == "tab:green" and len(set(colors.values())) == 4


# --------------------------------------------------------------------------- planned inputs

def test_every_figure_reads_only_what_it_draws():
    reads = {f: figure_evaluations(f, EVALUATIONS) for f in FIGURES}
    assert reads[PER_DATASET + "ptb"] == ["ppl-ptb-sparsegpt", "cost"]  # no memory, no latency
    assert reads[PER_DATASET + "wikitext2"] == ["ppl-wikitext2-sparsegpt", "cost"]
    assert reads["perplexity_vs_nonzero"] == ["ppl-ptb-sparsegpt", "ppl-wikitext2-sparsegpt", "cost"]
    assert reads["quantization_effect"] == ["ppl-ptb-sparsegpt", "ppl-wikitext2-sparsegpt", "cost", "memory"]
    assert reads["perplexity_vs_ratio"] == ["ppl-ptb-sparsegpt", "ppl-wikitext2-sparsegpt", "zeroshot", "cost"]
    assert reads["cost_vs_ratio"] == ["cost", "memory", "latency"]
    assert reads["pareto"] == ["ppl-ptb-sparsegpt", "cost", "memory", "latency"]
    assert set(FIGURE_READS) == set(plots.FIGURES) | {PER_DATASET}
    # an evaluation that is not enabled is not read
    assert figure_evaluations("cost_vs_ratio", ["ppl-ptb-sparsegpt", "cost"]) == ["cost"]


@pytest.mark.parametrize("figure", FIGURES)
def test_each_figure_draws_from_its_inputs_alone(study, figure):
    """The table restricted to the figure's planned evaluations draws the same figure content: nothing
    it shows comes from an evaluation it does not depend on."""
    evals = set(figure_evaluations(figure, EVALUATIONS))
    own = study[study.evaluation.isin(evals)]
    full, mine = plots.build(figure, study), plots.build(figure, own)
    try:
        def content(fig):
            return [(ax.get_xlabel(), ax.get_ylabel(), len(ax.collections), len(ax.lines), len(ax.patches))
                    for ax in fig.axes]
        assert content(mine) == content(full)
    finally:
        plt.close(full)
        plt.close(mine)


def test_study_table_pairs_each_model_with_its_nf4_twin(study, tmp_path):
    """scripts/study_table.py (the docs' study table): one row per pruned/healed model, the unquantized
    value next to its NF4-DQ twin's, read from summary.csv as the workflow writes it."""
    import subprocess
    import sys

    from llm_compression.report.table import write_table

    csv = tmp_path / "summary.csv"
    write_table(study, csv)
    out = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "scripts" / "study_table.py"),
                          str(csv)], capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    w = plots.wide(study)
    assert len(rows) == int((w.quant == "none").sum())  # one row per unquantized variant
    cells = {r.split(" | ")[0].lstrip("| "): [c.strip() for c in r.strip("| ").split(" | ")] for r in rows}
    dense = w[(w.method == "dense") & (w.quant == "none")].iloc[0]
    dense_q = w[(w.method == "dense") & (w.quant != "none")].iloc[0]
    ptb = cells["dense"][5]
    assert ptb == f"{dense.ppl_ptb:.4g} / {dense_q.ppl_ptb:.4g}"
    assert "SparseGPT 50% x2" in cells and "LLM-Pruner block 25% +lora" in cells
    bad = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "scripts" / "study_table.py"),
                          str(tmp_path / "missing.csv")], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.csv is not a file" in bad.stderr


def test_point_labels_take_their_familys_colour(study):
    """Where a Wanda and a SparseGPT point coincide, their labels still say which is which: each label is
    drawn in its marker's colour (darkened), in every figure that labels points."""
    w = plots.wide(study)
    colors = plots.family_colors(w.family)
    wanted = {tuple(round(c, 6) for c in plots.label_color(colors[f])) for f in set(w.family)}
    for figure in ("perplexity_vs_parameters_ptb", "perplexity_vs_nonzero", "perplexity_vs_ratio"):
        fig = plots.build(figure, study)
        try:
            got = {tuple(round(c, 6) for c in t.get_color()) for _, t in _annotations(fig)}
            assert got and got <= wanted, (figure, got - wanted)
            if figure != "perplexity_vs_ratio":  # that one labels only the repeated points (one family)
                assert len(got) >= 3, figure
        finally:
            plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xlim(0, 3)
    ax.set_ylim(0, 3)
    a, b = plots.place_labels(ax, [(1.0, 1.0, "50%", 6.0, "tab:blue"), (1.0, 1.0, "50%", 6.0, "tab:green")])
    assert a.get_color() == "tab:blue" and b.get_color() == "tab:green"
    (c,) = plots.place_labels(ax, [(2.0, 2.0, "x", 3.0)], color="0.1")
    assert c.get_color() == "0.1"
    plt.close(fig)


def test_gmacs_axis_names_the_forward_length(study):
    fig = plots.build("cost_vs_ratio", study)
    try:
        assert "GMACs per 512-token forward" in [ax.get_ylabel() for ax in fig.axes]
    finally:
        plt.close(fig)
    assert plots.macs_tokens(study) == "512"
    assert plots.macs_tokens(study[study.metric != "gmacs"]) is None


def test_quantization_effect_has_no_band_under_its_title(study):
    fig = plots.build("quantization_effect", study)
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        title_bottom = fig._suptitle.get_window_extent(r).y0
        top = max(ax.get_tightbbox(r).y1 for ax in fig.axes)
        assert 0 < title_bottom - top <= 12 * fig.dpi / 72  # the 8 pt gap, not an empty band
    finally:
        plt.close(fig)


def test_readable_protocol_spells_out_the_table_text():
    assert plots.readable_protocol("sparsegpt seqlen=512 windows=8 scored=4088 join=space cap=4096") == (
        "sparsegpt protocol: 8 windows of 512 tokens, 4,088 scored (first 4,096 tokens of the split)")
    assert plots.readable_protocol("llm-pruner seqlen=128 windows=1 scored=127 join=blank dtype=bfloat16") == (
        "llm-pruner protocol: 1 window of 128 tokens, 127 scored, in bfloat16")
    assert plots.readable_protocol("macs_seqlen=512") == "macs_seqlen=512"  # not a perplexity protocol
    assert plots.readable_protocol("") == ""


@pytest.mark.parametrize("figure", ["perplexity_vs_nonzero", "perplexity_vs_parameters_ptb", "quantization_effect",
                                    "perplexity_vs_ratio"])
def test_perplexity_figures_draw_each_points_interval(study, figure):
    """Every perplexity point carries its recorded 95% interval as an error bar spanning [low, high]."""
    from matplotlib.collections import LineCollection

    w = plots.wide(study)
    fig = plots.build(figure, study)
    try:
        segments = [seg for ax in fig.axes for c in ax.collections if isinstance(c, LineCollection)
                    for seg in c.get_segments() if len(seg) == 2]
        assert segments, "no interval drawn"
        spans = {round(float(abs(s[1] - s[0]).max()), 6) for s in segments}  # bar lengths in data units
        col = "ppl_ptb"
        expected = {round(float(h - lo), 6) for lo, h in zip(w[f"{col}_ci95_low"], w[f"{col}_ci95_high"])}
        if figure != "perplexity_vs_ratio":  # that one also draws zero-shot intervals, on its own panel
            assert expected & spans, (sorted(expected)[:3], sorted(spans)[:3])
    finally:
        plt.close(fig)


def test_zeroshot_panel_draws_the_interval_of_the_mean_over_tasks(study):
    w = plots.wide(study)
    assert w.zeroshot_acc_ci95_low.notna().all() and (w.zeroshot_acc_ci95_low < w.zeroshot_acc).all()
    from report_synthetic import TASKS

    assert (w.zeroshot_acc_n == 100 * len(TASKS)).all()  # documents scored over the tasks
