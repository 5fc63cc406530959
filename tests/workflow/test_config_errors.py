"""Bad config values that used to pass planning: each is refused while Snakemake plans (or at the
start of the job when the model is not known yet), with the value and the valid range named."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_compression.config import ConfigError, default_results_dir, expand_grid, validate_config
from llm_compression.variants import Pruning, canonical_ratio, format_ratio

ROOT = Path(__file__).resolve().parents[2]


def fake_checkpoint(d: Path, **cfg) -> Path:
    """A folder with only a config.json: all the planning checks read (they never load weights)."""
    d.mkdir(parents=True, exist_ok=True)
    base = {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "max_position_embeddings": 8192}
    (d / "config.json").write_text(json.dumps({**base, **cfg}))
    return d


@pytest.fixture
def cfg(tmp_path):
    src = fake_checkpoint(tmp_path / "model")
    return {
        "results": str(tmp_path / "results"),
        "model": {"name": "m", "source": str(src)},
        "grid": {"pruning": [{"method": "wanda", "ratios": [0.5]}], "quantization": ["none"]},
        "evaluation": {"perplexity": {"datasets": {"ptb": {"split": "test"}}}},
    }


def check(cfg):
    return validate_config(cfg, check_model=False)


def with_(cfg, **changes):
    c = copy.deepcopy(cfg)
    for path, value in changes.items():
        d = c
        keys = path.split("__")
        for k in keys[:-1]:
            d = d[int(k)] if k.isdigit() else d.setdefault(k, {})
        d[keys[-1]] = value
    return c


# ----------------------------------------------------------------------- no silent duplicates
def test_nm_level_refuses_other_ratios(cfg):
    bad = with_(cfg, grid__pruning=[{"method": "wanda", "level": "2:4", "ratios": [0.3, 0.5]}])
    with pytest.raises(ConfigError, match=r"grid\.pruning\[0\]\.ratios: \[0\.3, 0\.5\] with level '2:4'.*"
                                          r"sparsity 2/4 = 0\.5.*omit ratios \(or write \[0\.5\]\)"):
        check(bad)
    # the shipped form (no ratios: the default [0.5]) and the explicit [0.5] name one variant, as before
    for entry in ({"method": "wanda", "level": "2:4"}, {"method": "wanda", "level": "4:8", "ratios": [0.5]}):
        labels = [v.label for v in expand_grid(check(with_(cfg, grid__pruning=[entry])))]
        assert labels == ["dense", f"wanda_{entry['level'].replace(':', 'of')}_0.5_x1"]


def test_ratio_zero_is_refused(cfg):
    with pytest.raises(ConfigError, match=r"grid\.pruning\[0\]\.ratios\[1\]: 0 prunes nothing.*grid\.dense"):
        check(with_(cfg, grid__pruning=[{"method": "magnitude", "ratios": [0.5, 0]}]))


def test_one_ratio_one_name_everywhere():
    third = 1 / 3
    p = Pruning("wanda", "unstructured", third, 1)
    assert p.segment == "wanda_unstructured_0.333333_x1"
    assert p == Pruning.from_segment(p.segment) and p.ratio == canonical_ratio(third) == 0.333333
    assert format_ratio(p.ratio) == format_ratio(third)
    # the summary table writes the ratio as the path does
    import pandas as pd

    from llm_compression.report.plots import summary_markdown

    df = pd.DataFrame([{"model": "m", "variant": p.segment, "method": "wanda", "level": "unstructured",
                        "ratio": 0.000001, "repeat": 1, "healing": "none", "quant": "none", "evaluation": "cost",
                        "metric": "parameters", "dataset": "", "split": "", "value": 1.0, "protocol": ""}])
    assert "| 0.000001 |" in summary_markdown(df)


def test_two_ratios_with_one_name_are_refused_with_both_locations(cfg):
    bad = with_(cfg, grid__pruning=[{"method": "wanda", "ratios": [0.3333333, 1 / 3]}])
    with pytest.raises(ConfigError, match=r"grid\.pruning\[0\]\.ratios\[0\] \(0\.3333333\).*and "
                                          r"grid\.pruning\[0\]\.ratios\[1\] .*same artifact 'wanda_unstructured_0\.333333_x1'"):
        check(bad)


def test_entries_sharing_method_and_level_with_equal_options_are_one_grid(cfg):
    """Ratios with repeats next to one-shot ratios (the study: 0.1..0.9 x1/x2, and 0.19..0.84 x1 only) are
    two entries of one method; with equal options they plan as one, and every step reads those options."""
    from llm_compression.planning import prune_params

    c = check(with_(cfg, grid__pruning=[
        {"method": "sparsegpt", "ratios": [0.1, 0.3], "repeats": [1, 2], "percdamp": 0.05},
        {"method": "sparsegpt", "ratios": [0.19, 0.51], "percdamp": 0.05}]))
    prunings = [v.pruning for v in expand_grid(c)]
    assert [p.segment for p in prunings] == ["dense"] + [f"sparsegpt_unstructured_{r}" for r in
                                                          ("0.1_x1", "0.1_x2", "0.3_x1", "0.3_x2", "0.19_x1", "0.51_x1")]
    assert {prune_params(c, p)["percdamp"] for p in prunings[1:]} == {0.05}


@pytest.mark.parametrize("second, named", [
    ({"method": "sparsegpt", "ratios": [0.2], "percdamp": 0.02}, "percdamp: 0.05 there, 0.02 here"),
    ({"method": "sparsegpt", "ratios": [0.2]}, "percdamp: 0.05 there, None here"),
    ({"method": "sparsegpt", "ratios": [0.2], "healing": ["none", "lora"]}, "healing: None there"),
])
def test_entries_sharing_method_and_level_with_other_options_are_refused(cfg, second, named):
    bad = with_(cfg, grid__pruning=[{"method": "sparsegpt", "ratios": [0.1], "percdamp": 0.05}, second])
    with pytest.raises(ConfigError, match=r"grid\.pruning\[1\]: method 'sparsegpt' at level 'unstructured' is "
                                          r"already in grid\.pruning\[0\] with other options") as e:
        check(bad)
    assert named in str(e.value)


def test_the_same_ratio_in_two_entries_is_refused_with_both_locations(cfg):
    bad = with_(cfg, grid__pruning=[{"method": "wanda", "ratios": [0.3, 0.5]}, {"method": "wanda", "ratios": [0.5]}])
    with pytest.raises(ConfigError, match=r"grid\.pruning\[0\]\.ratios\[1\] \(0\.5\).*and grid\.pruning\[1\]\.ratios\[0\] "
                                          r".*same artifact 'wanda_unstructured_0\.5_x1'"):
        check(bad)


def test_repeated_oneshot_equivalent_of_an_explicit_ratio_is_one_variant(cfg):
    """0.5 twice ends at 0.75; its one-shot equivalent is the explicit 0.75 x1: one artifact, one name."""
    c = check(with_(cfg, grid__pruning=[{"method": "wanda", "ratios": [0.5, 0.75], "repeats": [1, 2],
                                          "oneshot_equivalent": True}]))
    labels = [v.label for v in expand_grid(c)]
    assert labels.count("wanda_unstructured_0.75_x1") == 1 and len(labels) == len(set(labels))


@pytest.mark.parametrize("grid,pattern", [
    ({"pruning": [{"method": "magnitude", "ratios": [0.5], "repeats": [1, 1]}]},
     r"repeats\[0\] \(1\) and grid\.pruning\[0\]\.ratios\[0\] \(0\.5\) x repeats\[1\] \(1\)"),
    ({"pruning": [], "quantization": ["none", "nf4", "nf4"]}, r"grid\.quantization\[1\] and grid\.quantization\[2\] are both 'nf4'"),
    ({"pruning": [{"method": "llm-pruner", "level": "block", "importance": ["taylor", "element1"]}]},
     r"importance\[0\] \('taylor'\) and grid\.pruning\[0\]\.importance\[1\] \('element1'\) are the same criterion"),
])
def test_duplicate_grid_items_are_refused(cfg, grid, pattern):
    c = copy.deepcopy(cfg)
    c["grid"].update(grid)
    with pytest.raises(ConfigError, match=pattern):
        check(c)


# ------------------------------------------------------- bad values that passed planning before
def test_results_naming_an_existing_file(cfg, tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    with pytest.raises(ConfigError, match=r"results: '.*taken' is an existing file; give a folder"):
        check(with_(cfg, results=str(f)))
    with pytest.raises(ConfigError, match=r"results: '.*taken/sub' lies under '.*taken', an existing file"):
        check(with_(cfg, results=str(f / "sub")))


def test_calibration_samples_beyond_memory(cfg):
    cfg["resources"] = {"model_params_b": 0.135}  # SmolLM2-135M: prune job memory 3000 + 0.135 x 10000 MB
    with pytest.raises(ConfigError, match=r"calibration\.samples: 1000000000 windows of 512 tokens need "
                                          r"2 x 1000000000 x 512 x 576 \(hidden size, .*config\.json\) x 4 B = "
                                          r"2,359,296\.0 GB .*prune job's memory of 4,350 MB.*valid: 1\.\.1933 windows"):
        check(with_(cfg, calibration={"samples": 1_000_000_000}))
    check(with_(cfg, calibration={"samples": 1933}))  # the largest that fits: accepted
    # methods without calibration activations are not bounded by it
    check(with_(cfg, calibration={"samples": 1_000_000_000}, grid__pruning=[{"method": "magnitude"}]))


def test_layer_range_beyond_depth(cfg):
    entry = {"method": "llm-pruner", "level": "block", "importance": "l2", "layer_range": [5, 100], "ratios": [0.25]}
    with pytest.raises(ConfigError, match=r"grid\.pruning\[0\]\.layer_range: \[5, 100\] is empty or outside the "
                                          r"model's 30 decoder layers .*valid: 0 <= start < end <= 30"):
        check(with_(cfg, grid__pruning=[entry]))
    check(with_(cfg, grid__pruning=[{**entry, "layer_range": [5, -1]}]))


@pytest.mark.parametrize("changes,where", [
    ({"evaluation__perplexity__seqlen": 100000}, r"evaluation\.perplexity\.seqlen: 100000"),
    ({"calibration": {"seqlen": 9000}}, r"calibration\.seqlen: 9000"),
    ({"evaluation__memory": {"enabled": True, "seqlen": 10000}}, r"evaluation\.memory\.seqlen: 10000"),
    ({"evaluation__latency": {"enabled": True, "prompt_tokens": 8190, "new_tokens": 32}},
     r"evaluation\.latency\.prompt_tokens \+ new_tokens: 8222"),
])
def test_windows_beyond_the_model_context(cfg, changes, where):
    with pytest.raises(ConfigError, match=where + r" tokens exceed the model's context of 8192 tokens "
                                                  r"\(max_position_embeddings in .*config\.json\); valid: 2\.\.8192"):
        check(with_(cfg, **changes))


def test_imported_base_config_is_read_when_the_source_is_not_local(cfg, tmp_path):
    """An embedded/hub model is known once imported: results/<model>/base/config.json."""
    c = with_(cfg, model={"name": "m", "source": "org/not-local"}, evaluation__perplexity__seqlen=4096)
    check(c)  # not imported yet: the job checks it at its start
    fake_checkpoint(tmp_path / "results" / "m" / "base", max_position_embeddings=2048)
    with pytest.raises(ConfigError, match=r"4096 tokens exceed the model's context of 2048"):
        check(c)


def test_prune_job_checks_at_its_start(tmp_path):
    from llm_compression.plan_checks import check_pruning_job

    ckpt = fake_checkpoint(tmp_path / "base", num_hidden_layers=4, hidden_size=64, max_position_embeddings=256)
    cal = {"samples": 10**9, "seqlen": 128}
    with pytest.raises(ConfigError, match=r"calibration\.samples: 1000000000 windows of 128 tokens"):
        check_pruning_job({"method": "sparsegpt", "calibration": cal}, ckpt, mem_mb=1000)
    with pytest.raises(ConfigError, match=r"calibration\.seqlen: 512 tokens exceed the model's context of 256"):
        check_pruning_job({"method": "wanda", "calibration": {"samples": 4, "seqlen": 512}}, ckpt, mem_mb=1000)
    with pytest.raises(ConfigError, match=r"layer_range: \[1, 9\] is empty or outside the model's 4 decoder layers"):
        check_pruning_job({"method": "llmpruner-l2", "layer_range": [1, 9]}, ckpt)
    check_pruning_job({"method": "wanda", "calibration": {"samples": 4, "seqlen": 128}}, ckpt, mem_mb=1000)


# ----------------------------------------------------------------- paths and results folders
def test_params_hold_no_absolute_path_of_the_project(tmp_path, monkeypatch):
    """Relative paths stay relative, so a moved project plans nothing again; absolute ones stay absolute."""
    proj = tmp_path / "proj"
    fake_checkpoint(proj / "models" / "tiny")
    (proj / "data").mkdir()
    (proj / "data" / "calib.txt").write_text("some text " * 100)
    monkeypatch.chdir(proj)
    c = validate_config({
        "model": {"name": "m", "source": "models/tiny"},
        "grid": {"pruning": [{"method": "wanda"}]},
        "calibration": {"corpus": "c4", "split": "validation", "path": "./data/calib.txt"},
        "evaluation": {"perplexity": {"datasets": {"wikitext2": {"path": "../proj/data"}}}},
        "healing": {"mine": {"method": "kd", "kd": {"teacher": "models/tiny"}}},
    })
    assert c["model"]["source"] == "models/tiny" and c["calibration"]["path"] == "data/calib.txt"
    assert c["evaluation"]["perplexity"]["datasets"]["wikitext2"]["path"] == "data"
    assert c["healing"]["mine"]["kd"]["teacher"] == "models/tiny"
    assert str(tmp_path) not in json.dumps(c)


def test_another_config_file_defaults_to_its_own_results_folder(tmp_path):
    assert default_results_dir([], tmp_path) == "results"
    assert default_results_dir([tmp_path / "config.yaml"], tmp_path) == "results"
    assert default_results_dir([tmp_path / "config.yaml", tmp_path / "my-copy.yaml"], tmp_path) == "results/my-copy"
    assert default_results_dir([tmp_path / "other" / "config.yaml"], tmp_path) == "results/config"


def test_snakemake_refuses_seqlen_beyond_context_before_any_job(tmp_path):
    """The reported case: a copy of config.yaml with seqlen 100000 is refused while planning (no job
    runs, nothing is deleted), and without `results:` it would write to results/<its name>/."""
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert "results" not in raw  # the default config leaves it to default_results_dir
    src = fake_checkpoint(tmp_path / "model")
    raw["model"]["source"] = str(src)
    raw["evaluation"]["perplexity"]["seqlen"] = 100000
    f = tmp_path / "my-copy.yaml"
    f.write_text(yaml.safe_dump(raw))
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(f), "--cores", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert ("evaluation.perplexity.seqlen: 100000 tokens exceed the model's context of 8192 tokens"
            in p.stderr), p.stderr[-2000:]


def test_calibration_samples_beyond_the_corpus():
    from llm_compression.plan_checks import check_calibration_corpus

    with pytest.raises(ConfigError, match=r"calibration\.samples: 1000000000 windows of 512 tokens from lambada/test "
                                          r"\(1,000,000 bytes of text, so at most 999,490 distinct windows\); valid: 1\.\.999,490"):
        check_calibration_corpus(10**9, 512, 1_000_000, "calibration.samples", "lambada/test")
    check_calibration_corpus(999_490, 512, 1_000_000, "calibration.samples", "lambada/test")
    with pytest.raises(ConfigError, match=r"at most 0 distinct windows"):   # shorter than one window
        check_calibration_corpus(1, 512, 100, "calibration.samples", "tiny")


def test_evaluation_job_checks_the_context_at_its_start(tmp_path):
    from llm_compression.plan_checks import check_evaluation_job

    ckpt = fake_checkpoint(tmp_path / "base", max_position_embeddings=256)
    with pytest.raises(ConfigError, match=r"evaluation\.perplexity\.seqlen: 100000 tokens exceed the model's context of 256"):
        check_evaluation_job({"kind": "perplexity", "preset": "sparsegpt", "seqlen": 100000}, ckpt)
    check_evaluation_job({"kind": "perplexity", "preset": "llm-pruner", "seqlen": 100000}, ckpt)  # 128-token windows
    with pytest.raises(ConfigError, match=r"evaluation\.memory\.seqlen: 512 tokens exceed"):
        check_evaluation_job({"kind": "memory", "seqlen": 512}, ckpt)


def test_healing_window_beyond_the_model_context(cfg):
    """Only recipes the grid uses are checked: an unused recipe does not block the run."""
    c = with_(cfg, healing={"long": {"method": "lora", "seqlen": 9000}})
    check(c)
    c["grid"]["healing"] = ["none", "long"]
    with pytest.raises(ConfigError, match=r"healing\.long\.seqlen: 9000 tokens exceed the model's context of 8192"):
        check(c)


def test_embedded_model_is_known_before_its_import(tmp_path):
    """The issue's case on the embedded default, before any run: its GGUF header gives depth 30 and context 8192."""
    from llm_compression.models import ModelSourceError, resolve_source

    try:
        resolve_source("embedded:smollm2-135m")
    except ModelSourceError as e:
        pytest.skip(f"needs the embedded model: {e}")
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["results"] = str(tmp_path / "results")   # nothing imported there
    entry = {"method": "llm-pruner", "level": "block", "importance": "l2", "layer_range": [5, 100], "ratios": [0.25]}
    with pytest.raises(ConfigError, match=r"layer_range: \[5, 100\] is empty or outside the model's 30 decoder layers "
                                          r"\(num_hidden_layers in .*SmolLM2-135M-Instruct\.Q4_1\.gguf\)"):
        check(with_(raw, grid__pruning=[entry]))
    with pytest.raises(ConfigError, match=r"evaluation\.perplexity\.seqlen: 100000 tokens exceed the model's context "
                                          r"of 8192 tokens"):
        check(with_(raw, evaluation__perplexity__seqlen=100000))
    from llm_compression.plan_checks import read_gguf_config

    assert read_gguf_config(resolve_source("embedded:smollm2-135m").path + "/SmolLM2-135M-Instruct.Q4_1.gguf") == {
        "num_hidden_layers": 30, "max_position_embeddings": 8192, "hidden_size": 576, "model_type": "llama",
        "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
        "tie_word_embeddings": True}


def test_gguf_quantization_of_a_model_it_cannot_export_is_refused_at_planning():
    from llm_compression.plan_checks import check_gguf_exportable

    cfg = {"grid": {"dense": True, "pruning": [{"method": "wanda", "level": "unstructured", "ratios": [0.5],
                                                "quantization": ["none", "gguf-q4_k_m"]}],
                    "quantization": ["none"], "healing": ["none"]}}
    with pytest.raises(ConfigError, match=r"gguf-q4_k_m: the GGUF export writes Llama-family models only; "
                                          r"gemma.cfg is model_type 'gemma3_text'"):
        check_gguf_exportable(cfg, "gemma3_text", "gemma.cfg")
    check_gguf_exportable(cfg, "llama", "llama.cfg")
    cfg["grid"]["pruning"][0]["quantization"] = ["none", "nf4-dq"]
    check_gguf_exportable(cfg, "gemma3_text", "gemma.cfg")
