"""Bad input gets a clear error naming the bad value and what would be valid, before any heavy work."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_compression.config import ConfigError, expand_grid, load_config_file, validate_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def long_context_checkpoint(tmp_path):
    """A tiny Llama whose context (1,024 tokens) admits the default 512-token windows."""
    from conftest import tiny_llama, tiny_tokenizer

    from llm_compression.models import save_checkpoint

    d = tmp_path / "tiny"
    save_checkpoint(tiny_llama(max_position_embeddings=1024), tiny_tokenizer(), d, {"stage": "test"})
    return d


@pytest.fixture
def cfg(long_context_checkpoint):
    return {
        "model": {"name": "tiny", "source": str(long_context_checkpoint)},
        "grid": {"pruning": [{"method": "wanda", "ratios": [0.5]}], "quantization": ["none", "nf4-dq"]},
        "evaluation": {"perplexity": {"datasets": {"ptb": {"split": "test"}}}},
    }


def test_valid_config_gets_defaults_and_grid(cfg):
    out = validate_config(cfg)
    assert out["calibration"]["corpus"] == "lambada" and out["evaluation"]["perplexity"]["seqlen"] == 512
    labels = [v.label for v in expand_grid(out)]
    assert labels == ["dense", "dense+nf4-dq", "wanda_unstructured_0.5_x1", "wanda_unstructured_0.5_x1+nf4-dq"]
    assert cfg["grid"].get("dense") is None  # the input is not modified


def test_quantization_per_entry_and_for_dense(cfg):
    """``grid.dense_quantization`` and an entry's ``quantization`` override ``grid.quantization``; GGUF variants run
    no zero-shot evaluation (they are measured in llama.cpp)."""
    from llm_compression.planning import Plan, variant_evaluations

    c = copy.deepcopy(cfg)
    c["grid"]["dense_quantization"] = ["none", "gguf-f16"]
    c["grid"]["pruning"].append({"method": "llm-pruner", "level": "block", "ratios": [0.25], "importance": "l2",
                                 "quantization": ["gguf-q4_k_m"]})
    out = validate_config(c)
    labels = [v.label for v in expand_grid(out)]
    assert labels == ["dense", "dense+gguf-f16", "wanda_unstructured_0.5_x1", "wanda_unstructured_0.5_x1+nf4-dq",
                      "llmpruner-l2_block_0.25_x1+gguf-q4_k_m"]
    runtimes = {v.label: v.runtime for v in expand_grid(out)}
    assert runtimes["dense+gguf-f16"] == "llama.cpp" and runtimes["dense"] == "pytorch"
    v = expand_grid(out)[1]
    assert variant_evaluations(v, ["ppl-ptb", "zeroshot", "cost"]) == ["ppl-ptb", "cost"]
    assert variant_evaluations(expand_grid(out)[0], ["ppl-ptb", "zeroshot"]) == ["ppl-ptb", "zeroshot"]
    plan = Plan(out)
    assert any("gguf-q4_k_m" in f for f in plan.metrics_files())
    c["grid"]["pruning"][1]["quantization"] = ["gguf-f16", "gguf-f16"]
    with pytest.raises(ConfigError, match=r"grid\.pruning\[1\]\.quantization\[0\] and \[1\] are both 'gguf-f16'"):
        validate_config(c)
    c["grid"]["pruning"][1]["quantization"] = ["q3"]
    with pytest.raises(ConfigError, match=r"quantization\[0\]: 'q3' is not one of"):
        validate_config(c)


def _bad(cfg, path, value):
    c = copy.deepcopy(cfg)
    d = c
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return c


@pytest.mark.parametrize("path,value,pattern", [
    (("grid", "pruning", 0, "method"), "obs", r"grid\.pruning\[0\]\.method: 'obs' is not one of \['magnitude', 'wanda'"),
    (("grid", "pruning", 0, "ratios"), [1.0], r"grid\.pruning\[0\]\.ratios\[0\]: 1\.0 is greater than or equal to the maximum of 1"),
    (("grid", "pruning", 0, "ratios"), [-0.1], r"ratios\[0\]: -0\.1 is less than the minimum of 0"),
    (("grid", "quantization"), ["int3"], r"grid\.quantization\[0\]: 'int3' is not one of"),
    (("evaluation", "perplexity", "datasets"), {"wiki": {}}, r"'wiki' is not one of \['ptb', 'wikitext2', 'c4'\]"),
    (("model", "source"), "./no/such/model", r"model\.source: model path '.*no/such/model' does not exist"),
    (("model", "source"), "embedded:llama-7b", r"unknown embedded model 'llama-7b'; valid: embedded:smollm2-135m"),
    (("calibration",), {"corpus": "ptb", "split": "train"}, r"calibration\.corpus: 'ptb' is also an evaluation dataset"),
    (("calibration",), {"corpus": "lambada", "split": "train"}, r"calibration\.split: dataset 'lambada' has no split 'train'; valid: test"),
    (("grid", "pruning", 0), {"method": "wanda", "level": "2:4", "repeats": [2]}, r"N:M pattern cannot be applied again"),
    (("grid", "pruning", 0, "colour"), "red", r"Additional properties are not allowed \('colour' was unexpected\)"),    (("calibration",), {"join": "newline"}, r"calibration\.join: 'newline' is not a join of corpus 'lambada'; valid: documents-blank-line"),
    (("calibration",), {"sampler": "python"}, r"calibration\.sampler: 'python' is not one of \['torch', 'reference'\]"),
])
def test_bad_values_are_named(cfg, path, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_config(_bad(cfg, path, value))


def test_missing_local_dataset_path(cfg):
    cfg["evaluation"]["perplexity"]["datasets"]["wikitext2"] = {"path": "/nonexistent/wt2"}
    with pytest.raises(ConfigError, match=r"wikitext2\.path: '/nonexistent/wt2' does not exist"):
        validate_config(cfg)
    cfg["evaluation"]["perplexity"]["datasets"]["wikitext2"]["skip_if_missing"] = True
    out = validate_config(cfg)
    assert "wikitext2" not in out["evaluation"]["perplexity"]["datasets"] and out["_warnings"]


def test_malformed_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {name: x\ngrid: [")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config_file(f)
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config_file(f)


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_snakemake_refuses_bad_config_before_any_job(tmp_path, cfg):
    """The workflow validates the config while parsing the Snakefile: exit 1, message, nothing run."""
    cfg["grid"]["pruning"][0]["method"] = "obs"
    cfg["results"] = str(tmp_path / "results")
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(cfg))
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(f), "--cores", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "'obs' is not one of ['magnitude', 'wanda'" in p.stderr + p.stdout
    assert not (tmp_path / "results").exists()


def test_duplicate_key_is_refused_with_both_lines(tmp_path):
    """Plain YAML keeps the last of two equal keys; a config must not lose a section silently."""
    f = tmp_path / "dup.yaml"
    f.write_text("evaluation:\n  cost:\n    seqlen: 1024\n  zeroshot: {tasks: []}\n  cost: true\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'cost' at line 5 \(first at line 2\)"):
        load_config_file(f)


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_snakemake_refuses_duplicate_key_before_any_job(tmp_path, cfg):
    cfg["results"] = str(tmp_path / "results")
    text = yaml.safe_dump(cfg, sort_keys=False) + "results: elsewhere\n"   # 'results' given twice
    f = tmp_path / "dup.yaml"
    f.write_text(text)
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(f), "--cores", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "duplicate key" in p.stderr + p.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("name", ["config.yaml", "config/unstructured.yaml", "config/structured.yaml",
                                  "config/healing.yaml", "config/healing_structured.yaml", "config/evaluation.yaml", "config/gemma.yaml", "config/study.yaml",
                                  "config/study-embedded.yaml", "config/quick.yaml", "config/gpu-acceptance.yaml"])
def test_every_shipped_config_is_complete_and_valid(name):
    """Each shipped config is a whole config (``--configfile`` replaces config.yaml), without duplicate keys."""
    c = load_config_file(ROOT / name, check_model=False)
    assert c["model"]["name"] and c["grid"]


def test_shipped_config_list_is_exhaustive():
    shipped = {"config.yaml"} | {f"config/{p.name}" for p in (ROOT / "config").glob("*.yaml")}
    listed = set(test_every_shipped_config_is_complete_and_valid.pytestmark[0].args[1])
    assert shipped == listed


def test_calibration_sampler_is_a_param_only_when_not_default(cfg):
    from llm_compression.planning import pruning_calibration

    for sampler, named in ((None, None), ("torch", None), ("reference", "reference")):
        c = copy.deepcopy(cfg)
        if sampler:
            c["calibration"] = {"sampler": sampler}
        out = validate_config(c)
        assert out["calibration"]["sampler"] == (sampler or "torch")
        pruning = next(v.pruning for v in expand_grid(out) if not v.pruning.is_dense)
        # the default stays out of the prune rule's params, so runs made before the option stay current
        assert pruning_calibration(out, pruning).get("sampler") == named
        assert "join" not in pruning_calibration(out, pruning)
    c = copy.deepcopy(cfg)
    c["calibration"] = {"corpus": "ptb", "split": "train", "join": "space", "sampler": "reference",
                        "allow_evaluation_corpus": True}
    out = validate_config(c)
    pruning = next(v.pruning for v in expand_grid(out) if not v.pruning.is_dense)
    assert {k: pruning_calibration(out, pruning)[k] for k in ("join", "sampler")} == {"join": "space", "sampler": "reference"}


def test_zeroshot_larger_sample_for_named_variants_only():
    """The variants a study compares head to head get the larger zero-shot sample; every other variant keeps
    the section's limit (its params, hence its cached result, unchanged); bad labels are refused by name."""
    import pytest

    from llm_compression.config import ConfigError, validate_config
    from llm_compression.planning import Plan

    def raw(**zeroshot):
        return {"model": {"name": "m", "source": "embedded:smollm2-135m"},
                "grid": {"pruning": [{"method": "wanda", "ratios": [0.5]}], "quantization": ["none", "nf4-dq"],
                         "dense_quantization": ["none", "gguf-f16"]},
                "evaluation": {"perplexity": {"datasets": {"ptb": {}}},
                               "zeroshot": {"tasks": ["piqa"], "limit": 10, **zeroshot}}}

    plan = Plan(validate_config(raw(larger_sample={"limit": 200, "variants": ["dense", "wanda_unstructured_0.5_x1"]}),
                                check_model=False))
    limits = {v.label: plan.evaluation_params("zeroshot", v)["limit"] for v in plan.variants if v.runtime != "llama.cpp"}
    assert limits == {"dense": 200, "wanda_unstructured_0.5_x1": 200, "wanda_unstructured_0.5_x1+nf4-dq": 10}
    plain = Plan(validate_config(raw(), check_model=False))
    other = next(v for v in plain.variants if v.label == "wanda_unstructured_0.5_x1+nf4-dq")
    assert plan.evaluation_params("zeroshot", other) == plain.evaluation_params("zeroshot", other)
    assert "larger_sample" not in plan.evaluation_params("zeroshot", other)
    with pytest.raises(ConfigError, match=r"\['wanda_0.5'\] is not a variant of the grid that runs zero-shot.*"
                                          r"valid labels: dense, "):
        validate_config(raw(larger_sample={"limit": 200, "variants": ["wanda_0.5"]}), check_model=False)
    with pytest.raises(ConfigError, match=r"\['dense\+gguf-f16'\] is not a variant"):
        validate_config(raw(larger_sample={"limit": 200, "variants": ["dense+gguf-f16"]}), check_model=False)
    bad = raw(larger_sample={"limit": 200, "variants": ["dense"]})
    bad["evaluation"]["zeroshot"]["tasks"] = []
    with pytest.raises(ConfigError, match="zero-shot is off"):
        validate_config(bad, check_model=False)
