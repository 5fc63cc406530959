"""Intervals (llm_compression.stats) against hand computations, and where the evaluations record them."""

import math

import pytest

from llm_compression.stats import mean_interval, paired_perplexity_ratio, perplexity_interval, wilson_interval


def test_wilson_interval_by_hand():
    # 7/10: centre (0.7 + z^2/20) / (1 + z^2/10), half-width z sqrt(0.021 + z^2/400) / (1 + z^2/10), z = 1.959964
    lo, hi = wilson_interval(7, 10)
    assert lo == pytest.approx(0.396778, abs=1e-6) and hi == pytest.approx(0.892209, abs=1e-6)
    # 0/10: the normal interval would be 0 +- 0; Wilson's is [0, z^2/10 / (1 + z^2/10)]
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277533, abs=1e-6)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.277533, abs=1e-6)
    for bad in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_paired_perplexity_ratio_by_hand():
    # per-token differences 0.2, 0.2, 0, 0.2: mean 0.15, sd 0.1, t(0.975, 3) = 3.182446, half 0.159122
    ratio, lo, hi = paired_perplexity_ratio([10, 12, 11, 13], [9, 11, 11, 12], [5, 5, 5, 5])
    assert ratio == pytest.approx(math.exp(0.15), rel=1e-9)
    assert lo == pytest.approx(math.exp(0.15 - 0.159122), rel=1e-6)
    assert hi == pytest.approx(math.exp(0.15 + 0.159122), rel=1e-6)
    assert lo < 1 < hi  # within noise: the interval holds 1
    with pytest.raises(ValueError, match="differ in number"):
        paired_perplexity_ratio([1, 2], [1], [5, 5])


def test_perplexity_and_mean_intervals():
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.302653
    assert mean == 2.0 and hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    lo, hi = perplexity_interval([20.0, 30.0], [10, 10])  # per-token 2.0, 3.0
    assert lo < math.exp(2.5) < hi
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval([1.0])


def test_zeroshot_intervals_per_task_and_over_tasks():
    from llm_compression.evaluate.zeroshot import add_accuracy_intervals

    per_task = {"a": {"acc": 0.7, "acc_norm": None, "samples": 10}, "b": {"acc": 0.0, "acc_norm": None, "samples": 10}}
    metrics = {"acc": 0.35, "acc_tasks": 2}
    add_accuracy_intervals(per_task, metrics)
    assert per_task["a"]["acc_ci95_low"] == pytest.approx(0.396778, abs=1e-6)
    assert per_task["b"]["acc_ci95_low"] == 0.0 and per_task["b"]["acc_ci95_high"] == pytest.approx(0.277533, abs=1e-6)
    half = math.sqrt(((0.892209 - 0.396778) / 2) ** 2 + (0.277533 / 2) ** 2) / 2
    assert metrics["acc_ci95_low"] == pytest.approx(0.35 - half, abs=1e-5)
    assert metrics["acc_ci95_high"] == pytest.approx(0.35 + half, abs=1e-5)
    assert metrics["acc_samples"] == 20 and "acc_norm_ci95_low" not in metrics


def test_perplexity_record_carries_windows_and_its_interval():
    import torch

    from conftest import tiny_llama
    from llm_compression.evaluate.perplexity import perplexity

    ids = torch.randint(0, 256, (4 * 16,), generator=torch.Generator().manual_seed(0))
    r = perplexity(tiny_llama(), ids, seqlen=16, batch_size=3)
    assert len(r["window_nll"]) == 4 and r["window_tokens"] == [15] * 4
    assert sum(r["window_nll"]) == pytest.approx(r["nll_sum"], rel=1e-6)
    assert r["perplexity_ci95_low"] < r["perplexity"] < r["perplexity_ci95_high"]


def test_table_pairs_each_perplexity_with_the_dense_models_on_the_same_windows(tmp_path):
    import json

    from llm_compression.report.table import build_table
    from llm_compression.variants import Pruning, Variant

    def rec(variant, nll, tokens=(5, 5, 5, 5)):
        return {"model": "m", "variant": variant.row(), "evaluation": "ppl-ptb",
                "metrics": {"perplexity": math.exp(sum(nll) / sum(tokens))},
                "windows": {"nll": list(nll), "tokens": list(tokens)},
                "protocol": {"dataset": "ptb", "split": "test", "preset": "sparsegpt", "seqlen": 6, "windows": 4,
                             "scored_tokens": 20}}

    files = []
    for name, r in (("dense", rec(Variant(Pruning("dense")), [9, 11, 11, 12])),
                    ("near", rec(Variant(Pruning("wanda", ratio=0.5)), [10, 12, 11, 13])),
                    ("far", rec(Variant(Pruning("magnitude", ratio=0.5)), [19, 21, 22, 22])),
                    ("other", rec(Variant(Pruning("sparsegpt", ratio=0.5)), [10, 12, 11], (5, 5, 5)))):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
        files.append(tmp_path / f"{name}.json")
    df = build_table(files)
    v = df.set_index(["variant", "metric"]).value
    near = "wanda_unstructured_0.5_x1"
    assert v[near, "ppl_ratio_to_dense"] == pytest.approx(math.exp(0.15))
    assert v[near, "ppl_ratio_to_dense_ci95_low"] == pytest.approx(math.exp(0.15 - 0.159122), rel=1e-6)
    assert v[near, "ppl_within_noise_of_dense"] == 1.0
    assert v["magnitude_unstructured_0.5_x1", "ppl_within_noise_of_dense"] == 0.0
    assert ("sparsegpt_unstructured_0.5_x1", "ppl_ratio_to_dense") not in v.index  # other windows: not paired
    assert ("dense", "ppl_ratio_to_dense") not in v.index
    # the ratio's own row carries its n (windows) and both interval ends
    row = df[(df.variant == near) & (df.metric == "ppl_ratio_to_dense")].iloc[0]
    assert row.n == 4 and row.ci95_low == pytest.approx(math.exp(0.15 - 0.159122), rel=1e-6)
    assert row.ci95_high == pytest.approx(math.exp(0.15 + 0.159122), rel=1e-6)
    # the summary marks the pair within noise, and not the far one
    from llm_compression.report.plots import summary_markdown

    md = summary_markdown(df)
    line = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "≈ dense" in line[near] and "≈ dense" not in line["magnitude_unstructured_0.5_x1"]
    assert "≈ dense" not in line["dense"]


def test_every_perplexity_and_zeroshot_row_carries_n_and_both_interval_ends(tmp_path):
    import json

    from llm_compression.evaluate.zeroshot import add_accuracy_intervals
    from llm_compression.report.plots import summary_markdown
    from llm_compression.report.table import build_table
    from llm_compression.variants import Pruning, Variant

    dense = Variant(Pruning("dense")).row()
    nll, tokens = [20.0, 30.0, 26.0], [10, 10, 10]
    lo, hi = perplexity_interval(nll, tokens)
    ppl = {"model": "m", "variant": dense, "evaluation": "ppl-ptb",
           "metrics": {"perplexity": math.exp(76 / 30), "perplexity_ci95_low": lo, "perplexity_ci95_high": hi,
                       "nll_sum": 76.0},
           "windows": {"nll": nll, "tokens": tokens},
           "protocol": {"dataset": "ptb", "split": "test", "preset": "sparsegpt", "seqlen": 11, "windows": 3,
                        "scored_tokens": 30}}
    tasks = {"a": {"acc": 0.7, "acc_norm": 0.6, "samples": 10}, "b": {"acc": 0.0, "acc_norm": 0.1, "samples": 10}}
    metrics = {"acc": 0.35, "acc_tasks": 2, "acc_norm": 0.35, "acc_norm_tasks": 2}
    add_accuracy_intervals(tasks, metrics)
    zs = {"model": "m", "variant": dense, "evaluation": "zeroshot", "tasks": tasks, "metrics": metrics,
          "protocol": {"harness": "lm-eval", "limit": 10, "tasks": {"a": {"split": "validation"},
                                                                   "b": {"split": "validation"}}}}
    files = []
    for name, r in (("ppl", ppl), ("zs", zs)):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
        files.append(tmp_path / f"{name}.json")
    df = build_table(files)
    p = df[df.metric == "perplexity"].iloc[0]
    assert (p.n, p.ci95_low, p.ci95_high) == (3, pytest.approx(lo), pytest.approx(hi))
    acc = df[(df.metric.isin(["acc", "acc_norm"]))]
    assert len(acc) == 6 and acc.n.notna().all() and acc.ci95_low.notna().all() and acc.ci95_high.notna().all()
    a7 = acc[(acc.dataset == "a") & (acc.metric == "acc")].iloc[0]
    assert a7.n == 10 and a7.ci95_low == pytest.approx(0.396778, abs=1e-6) and a7.ci95_high == pytest.approx(0.892209, abs=1e-6)
    b0 = acc[(acc.dataset == "b") & (acc.metric == "acc")].iloc[0]
    assert b0.ci95_low == 0.0 and b0.ci95_high == pytest.approx(0.277533, abs=1e-6)  # never a bare +-0
    avg = acc[(acc.dataset == "average") & (acc.metric == "acc")].iloc[0]
    assert avg.n == 20 and avg.ci95_low == pytest.approx(metrics["acc_ci95_low"])
    # rows without an interval (counts) leave the cells empty; the CSV keeps the columns
    assert df[df.metric == "samples"].ci95_low.isna().all()
    md = summary_markdown(df)
    assert f"[{lo:.4g}, {hi:.4g}]" in md
    assert "35.0% [" in md and "] n=20" in md


def test_zeroshot_mean_is_compared_with_the_dense_models(tmp_path):
    """diff +- sqrt(h_v^2 + h_d^2) from the two means' half-widths; within noise when it holds 0."""
    import json

    from llm_compression.report.plots import summary_markdown
    from llm_compression.report.table import build_table
    from llm_compression.variants import Pruning, Variant

    def rec(variant, acc, lo, hi):
        return {"model": "m", "variant": variant.row(), "evaluation": "zeroshot",
                "tasks": {"piqa": {"acc": acc, "samples": 100}},
                "metrics": {"acc": acc, "acc_ci95_low": lo, "acc_ci95_high": hi, "acc_samples": 100},
                "protocol": {"harness": "lm-eval", "limit": 100, "tasks": {"piqa": {"split": "validation"}}}}

    files = []
    for name, r in (("dense", rec(Variant(Pruning("dense")), 0.60, 0.50, 0.70)),
                    ("near", rec(Variant(Pruning("wanda", ratio=0.5)), 0.55, 0.45, 0.65)),
                    ("far", rec(Variant(Pruning("magnitude", ratio=0.5)), 0.30, 0.21, 0.39))):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
        files.append(tmp_path / f"{name}.json")
    df = build_table(files)
    d = df[df.metric == "zeroshot_acc_diff_to_dense"].set_index("variant")
    half = math.hypot(0.10, 0.10)
    assert d.loc["wanda_unstructured_0.5_x1", "value"] == pytest.approx(-0.05)
    assert d.loc["wanda_unstructured_0.5_x1", "ci95_low"] == pytest.approx(-0.05 - half)
    assert d.loc["wanda_unstructured_0.5_x1", "n"] == 100
    v = df.set_index(["variant", "metric"]).value
    assert v["wanda_unstructured_0.5_x1", "zeroshot_acc_within_noise_of_dense"] == 1.0
    assert v["magnitude_unstructured_0.5_x1", "zeroshot_acc_within_noise_of_dense"] == 0.0
    line = {ln.split("|")[1].strip(): ln for ln in summary_markdown(df).splitlines() if ln.startswith("| ")}
    assert "55.0% [45.0, 65.0] n=100 ≈ dense" in line["wanda_unstructured_0.5_x1"]
    assert "≈ dense" not in line["magnitude_unstructured_0.5_x1"]
