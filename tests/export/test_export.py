"""Hub-ready exports (llm_compression.export, rule `export`): the folder holds the checkpoint, its metrics
and a model card whose front matter Hugging Face's own parser accepts, and it loads in a fresh process with
identical logits; lm-evaluation-harness scores an exported checkpoint from its command line, offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama, tiny_tokenizer
from llm_compression.config import ConfigError, validate_config
from llm_compression.export import ExportError, base_model_info, export_checkpoint, select_export_variants
from llm_compression.io import write_json_atomic
from llm_compression.models import save_checkpoint
from llm_compression.prune import prune_model
from llm_compression.variants import Pruning, Variant, export_dir

ROOT = Path(__file__).resolve().parents[2]
SRC = str(ROOT / "src")
MODEL = "tiny"
WANDA = Variant(Pruning("magnitude", "unstructured", 0.5, 1))


def _ids(n=2, t=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 256, (n, t), generator=g)


def _ppl_record(variant: Variant, value: float, dataset="ptb") -> dict:
    """A metrics record shaped as workflow/scripts/evaluate.py writes it."""
    return {"schema": "llm-compression/metrics/v1", "model": MODEL, "variant": variant.row(),
            "evaluation": f"ppl-{dataset}-sparsegpt", "artifact": "results/tiny/pruned/x",
            "metrics": {"perplexity": value, "nll_sum": 1.0},
            "protocol": {"dataset": dataset, "split": "test", "preset": "sparsegpt", "join": "space", "seqlen": 128,
                         "stride": 128, "windows": 8, "scored_tokens": 1016, "limit_tokens": 1024, "capped": True}}


def _zeroshot_record(variant: Variant) -> dict:
    return {"schema": "llm-compression/metrics/v1", "model": MODEL, "variant": variant.row(), "evaluation": "zeroshot",
            "metrics": {"acc": 0.3, "acc_norm": 0.5},
            "tasks": {"piqa": {"acc": 0.6, "acc_stderr": 0.05, "acc_norm": 0.55, "acc_norm_stderr": 0.05,
                               "samples": 100, "acc_ci95_low": 0.502, "acc_ci95_high": 0.691},
                      "boolq": {"acc": 0.0, "acc_stderr": 0.0, "samples": 10, "acc_ci95_low": 0.0,
                                "acc_ci95_high": 0.2775}},
            "protocol": {"harness": "lm-eval 0.4.13", "num_fewshot": 0, "limit": 100, "source": "offline",
                         "tasks": {"piqa": {"split": "validation"}, "boolq": {"split": "validation"}}}}


@pytest.fixture
def pruned_checkpoint(tmp_path):
    """A magnitude-50% tiny Llama saved as the workflow saves it (import -> prune chain), its logits, its metrics."""
    model = tiny_llama()
    res = prune_model(model, method="magnitude", level="unstructured", ratio=0.5)
    ckpt = tmp_path / "results" / "tiny" / "pruned" / WANDA.pruning.segment
    save_checkpoint(model, tiny_tokenizer(), ckpt, {
        "stage": "prune", "parent": "results/tiny/base",
        "parent_compression": {"stage": "import", "source": "embedded:smollm2-135m", "source_kind": "embedded",
                               "dtype": "float32", "note": "weights on a 4-bit grid"},
        "pruning": {"method": "magnitude", "level": "unstructured", "ratio": 0.5, "repeat": 1, "scope": "layer"},
        "calibration": None,
        "result": {k: res[k] for k in ("sparsity_before", "sparsity_after", "prunable_weights", "zero_weights")},
    })
    metrics_dir = tmp_path / "results" / "tiny" / "metrics" / WANDA.pruning.segment / "none" / "none"
    n_params = sum(p.numel() for p in model.parameters())
    cost = {"schema": "llm-compression/metrics/v1", "model": MODEL, "variant": WANDA.row(), "evaluation": "cost",
            "metrics": {"parameters": n_params, "nonzero_parameters": int(sum((p != 0).sum() for p in model.parameters())),
                        "sparsity": res["sparsity_after"], "disk_bytes": (ckpt / "model.safetensors").stat().st_size,
                        "gmacs": 0.01, "linear_bits_per_weight": 32.0, "zero_weights": res["zero_weights"]},
            "protocol": {"macs_seqlen": 32, "batch": 1}}
    files = []
    for rec in (cost, _ppl_record(WANDA, 123.456), _zeroshot_record(WANDA)):
        f = metrics_dir / f"{rec['evaluation']}.json"
        write_json_atomic(f, rec)
        files.append(str(f))
    with torch.no_grad():
        logits = model(_ids()).logits
    return {"ckpt": ckpt, "metrics": files, "logits": logits, "sparsity": res["sparsity_after"], "cost": cost}


def test_export_dir_path():
    assert export_dir("m", WANDA) == "m/export/magnitude_unstructured_0.5_x1/none/none"
    assert export_dir("m", Variant(Pruning("dense"), "none", "nf4-dq")) == "m/export/dense/none/nf4-dq"


def test_select_export_variants_and_config_check():
    grid = [Variant(Pruning("dense")), Variant(Pruning("dense"), quant="nf4"), WANDA]
    assert select_export_variants([], grid) == []
    assert select_export_variants("all", grid) == grid
    assert select_export_variants(["magnitude_unstructured_0.5_x1", "dense"], grid) == [grid[0], WANDA]
    with pytest.raises(ExportError, match=r"\['dense\+nf4-dq'\] is not a variant .*valid labels: dense, dense\+nf4"):
        select_export_variants(["dense+nf4-dq"], grid)
    with pytest.raises(ExportError, match="'everything' must be 'all' or a list"):
        select_export_variants("everything", grid)

    import yaml

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert validate_config(cfg, base_dir=ROOT, check_model=False)["report"]["export"] == []  # default: no export
    cfg["report"]["export"] = ["wanda_unstructured_0.5_x1+nf4-dq", "wanda_unstructured_0.5_x1+nf4"]
    with pytest.raises(ConfigError, match=r"report.export: \['wanda_unstructured_0.5_x1\+nf4'\] is not a variant"):
        validate_config(cfg, base_dir=ROOT, check_model=False)
    cfg["report"]["export"] = "some"
    with pytest.raises(ConfigError, match="report.export"):
        validate_config(cfg, base_dir=ROOT, check_model=False)


def test_base_model_info(tmp_path):
    assert base_model_info("embedded:smollm2-135m") == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                        "license": "apache-2.0"}
    assert base_model_info("some-org/some-model")["base_model"] == "some-org/some-model"
    local = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc"
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}")
    assert base_model_info(str(local)) == {"base_model": "org/name", "license": None}
    (local / "README.md").write_text("---\nlicense: mit\nbase_model: [up/stream]\n---\n# card\n")
    assert base_model_info(str(local)) == {"base_model": "up/stream", "license": "mit"}


@pytest.mark.slow  # loads the saved folder in a fresh Python process
def test_export_card_front_matter_and_fresh_process_logits(pruned_checkpoint, tmp_path):
    from huggingface_hub import ModelCard, metadata_load

    out = tmp_path / "results" / export_dir(MODEL, WANDA)
    (pruned_checkpoint["ckpt"] / ".snakemake_timestamp").touch()
    (pruned_checkpoint["ckpt"] / "model.safetensors").chmod(0o600)  # as safetensors leaves it on some systems
    info = export_checkpoint(pruned_checkpoint["ckpt"], out, metrics_files=pruned_checkpoint["metrics"], model=MODEL,
                             variant=WANDA.row(), base=base_model_info("embedded:smollm2-135m"))
    assert info["plain_loadable"] and not info["quantized"]
    # readable by others as the umask allows (a folder to share), and no Snakemake marker copied from the source
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask
    assert ((out / "README.md").stat().st_mode & 0o777) == 0o666 & ~umask
    for f in ("compression.json", "model.safetensors", "metrics/cost.json"):
        assert ((out / f).stat().st_mode & 0o777) == 0o666 & ~umask, f
    for f in ("README.md", "config.json", "model.safetensors", "tokenizer.json", "compression.json",
              "metrics/cost.json", "metrics/ppl-ptb-sparsegpt.json", "metrics/zeroshot.json"):
        assert (out / f).is_file(), f
    assert not (out / ".snakemake_timestamp").exists() and ".snakemake_timestamp" not in info["files"]

    # the front matter, read back by huggingface_hub's own parsers
    card = ModelCard.load(out / "README.md")
    meta = metadata_load(out / "README.md")
    assert meta == card.data.to_dict()
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "text-generation"
    sparsity_pct = round(100 * pruned_checkpoint["cost"]["metrics"]["sparsity"])
    assert sparsity_pct == 50
    assert "| cost | sparsity |  |  |  | 50.00% | macs_seqlen=32 |" in card.text
    assert "| cost | zero_weights |" not in card.text  # headline values only; all of them in metrics/cost.json
    for tag in ("llm-compression", "pruned", "magnitude", "unstructured-sparsity", f"sparsity-{sparsity_pct}"):
        assert tag in card.data.tags, (tag, card.data.tags)
    assert not any(t in card.data.tags for t in ("4-bit", "nf4", "lora"))
    results = {(r.dataset_type, r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert results[("ptb_text_only", "perplexity", "sparsegpt+cap1024")] == pytest.approx(123.456)
    assert results[("ybisk/piqa", "acc", "lm-eval-0shot-limit100-offline")] == pytest.approx(0.6)
    assert results[("ybisk/piqa", "acc_norm", "lm-eval-0shot-limit100-offline")] == pytest.approx(0.55)

    # the body: provenance chain, the measured values with their protocols, how to load it
    text = card.text
    assert re.search(r"1\. \*\*import\*\* `embedded:smollm2-135m`.*\n2\. \*\*prune\*\* magnitude", text)
    assert f"measured sparsity {100 * pruned_checkpoint['sparsity']:.2f}%" in text
    assert re.search(r"\| ppl-ptb-sparsegpt \| perplexity \| ptb \| test \| sparsegpt\+cap1024 \| 123\.5 \| .*windows=8", text)
    assert "| zeroshot | acc | piqa | validation | lm-eval-0shot-limit100-offline | 0.6 [0.502, 0.691] (n = 100 documents) |" in text
    # an accuracy of exactly 0 carries its Wilson interval and n, never a bare "0 +- 0"
    assert "| zeroshot | acc | boolq | validation | lm-eval-0shot-limit100-offline | 0 [0, 0.2775] (n = 10 documents) |" in text
    assert "± 0.000" not in text and "acc_ci95_low" not in text
    assert "AutoModelForCausalLM.from_pretrained" in text and "load_checkpoint(" in text and "lm_eval --model hf" in text
    assert json.loads((out / "compression.json").read_text())["pruning"]["method"] == "magnitude"

    # a fresh process loads the folder (plain transformers and load_checkpoint): identical logits
    torch.save(_ids(), tmp_path / "ids.pt")
    code = ("import sys, torch\n"
            "from transformers import AutoModelForCausalLM\n"
            "from llm_compression.models import load_checkpoint\n"
            "ids = torch.load(sys.argv[2])\n"
            "plain = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
            "ours, _ = load_checkpoint(sys.argv[1])\n"
            "with torch.no_grad():\n"
            "    torch.save({'plain': plain(ids).logits, 'ours': ours(ids).logits}, sys.argv[2] + '.out')\n")
    r = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "ids.pt")], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(tmp_path / "ids.pt.out")
    assert torch.equal(got["plain"], pruned_checkpoint["logits"])
    assert torch.equal(got["ours"], pruned_checkpoint["logits"])


def test_export_refuses_foreign_metrics_and_keeps_existing(pruned_checkpoint, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    other = tmp_path / "other.json"
    write_json_atomic(other, _ppl_record(Variant(Pruning("dense")), 50.0))
    with pytest.raises(ExportError, match="belongs to tiny/dense, not tiny/magnitude_unstructured_0.5_x1"):
        export_checkpoint(pruned_checkpoint["ckpt"], out, metrics_files=[other], model=MODEL, variant=WANDA.row(),
                          base={})
    with pytest.raises(ExportError, match="no config.json"):
        export_checkpoint(tmp_path, out, metrics_files=[], model=MODEL, variant=WANDA.row(), base={})
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.slow  # loads the saved folder in a fresh Python process
def test_export_per_layer_widths_card_and_reload(tmp_path):
    """A structurally pruned checkpoint with per-layer widths: the card says load_checkpoint (from_pretrained
    cannot build it), and load_checkpoint in a fresh process gives identical logits."""
    from huggingface_hub import ModelCard

    from llm_compression.prune.structured import prune_structured

    model = tiny_llama(num_hidden_layers=4)
    r = prune_structured(model, level="block", ratio=0.25, importance="l2", layer_range=[0, 4])
    assert not r["plain_loadable"]
    variant = Variant(Pruning("llmpruner-l2", "block", 0.25, 1))
    ckpt = tmp_path / "ckpt"
    save_checkpoint(model, tiny_tokenizer(), ckpt, {"stage": "prune", "pruning": {"method": "llmpruner-l2"},
                                                     "result": {"structured": {"plain_loadable": False}}})
    out = tmp_path / "export"
    info = export_checkpoint(ckpt, out, metrics_files=[], model=MODEL, variant=variant.row(), base={})
    assert not info["plain_loadable"]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.base_model is None
    assert {"structured-pruning", "llm-pruner", "block-pruning"} <= set(card.data.tags)
    assert "from_pretrained(" not in card.text and "load_checkpoint(" in card.text
    assert "license applies" in card.text
    with torch.no_grad():
        want = model(_ids()).logits
    torch.save(_ids(), tmp_path / "ids.pt")
    code = ("import sys, torch\nfrom llm_compression.models import load_checkpoint\n"
            "m, _ = load_checkpoint(sys.argv[1])\n"
            "with torch.no_grad():\n    torch.save(m(torch.load(sys.argv[2])).logits, sys.argv[2] + '.out')\n")
    p = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "ids.pt")], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": SRC})
    assert p.returncode == 0, p.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "ids.pt.out"), want)


def test_export_quantized_tags(tmp_path, tiny_checkpoint):
    from huggingface_hub import ModelCard

    from llm_compression.quantize import quantize_checkpoint

    q = tmp_path / "q"
    quantize_checkpoint(tiny_checkpoint, q, scheme="nf4-dq", device="cpu", compute_dtype="float32", blocksize=64)
    variant = Variant(Pruning("dense"), "none", "nf4-dq")
    cost = tmp_path / "cost.json"  # NF4 rounds the smallest weights to its exact zero: measured, but not pruning
    write_json_atomic(cost, {"model": MODEL, "variant": variant.row(), "evaluation": "cost",
                             "metrics": {"sparsity": 0.095}, "protocol": {"macs_seqlen": 32}})
    info = export_checkpoint(q, tmp_path / "export", metrics_files=[cost], model=MODEL, variant=variant.row(),
                             base={"base_model": "org/base", "license": "mit"})
    assert info["quantized"] and info["plain_loadable"]
    card = ModelCard.load(tmp_path / "export" / "README.md")
    assert {"bitsandbytes", "4-bit", "nf4", "double-quantization"} <= set(card.data.tags)
    assert "pruned" not in card.data.tags and not any(t.startswith("sparsity-") for t in card.data.tags)
    assert "and bitsandbytes" in card.text and "**quantize** nf4-dq" in card.text
    assert "| cost | sparsity |  |  |  | 9.50% |" in card.text


def test_workflow_plans_configured_exports(tmp_path):
    """report.export adds the export jobs to the default target (the default, [], none: see the config test)."""
    def dry(*extra):
        r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *extra], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        return dict(re.findall(r"^([a-z_]+)\s+(\d+)$", r.stdout, re.M)), r.stdout

    stats, out = dry("--config", 'report={"export": ["dense", "wanda_unstructured_0.5_x1+nf4-dq"]}')
    assert stats["export"] == "2", stats
    assert "output: results/smollm2-135m/export/wanda_unstructured_0.5_x1/none/nf4-dq" in out
    assert "output: results/smollm2-135m/export/dense/none/none" in out


TINY_TASK = """task: tiny_next_word
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _our_loglikelihood(model, tok, context: str, continuation: str) -> float:
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


@pytest.mark.slow  # ~70 s under load: lm-eval's start-up dominates
def test_lm_eval_cli_scores_exported_checkpoint_offline(pruned_checkpoint, tmp_path):
    """`lm_eval --model hf --model_args pretrained=<export>` scores the exported folder on a local task with no
    network: per-document log-likelihoods and accuracy equal our own computation on the same weights."""
    out = tmp_path / "export"
    export_checkpoint(pruned_checkpoint["ckpt"], out, metrics_files=[], model=MODEL, variant=WANDA.row(), base={})
    docs = []
    g = torch.Generator().manual_seed(7)
    for i in range(6):
        words = [f"w{int(x)}" for x in torch.randint(3, 256, (6,), generator=g)]
        docs.append({"context": " ".join(words[:4]), "choices": [f" {words[4]}", f" {words[5]}", " w7"],
                     "label": i % 3})
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_next_word.yaml").write_text(TINY_TASK.format(data=data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf-home"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={out},dtype=float32",
           "--tasks", "tiny_next_word", "--include_path", str(tasks), "--device", "cpu", "--batch_size", "2",
           "--output_path", str(tmp_path / "lm-eval-out"), "--log_samples"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    results = json.loads(next((tmp_path / "lm-eval-out").rglob("results_*.json")).read_text())
    samples = [json.loads(line) for f in (tmp_path / "lm-eval-out").rglob("samples_tiny_next_word_*.jsonl")
               for line in f.read_text().splitlines()]
    assert len(samples) == len(docs)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    correct = 0
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        doc = docs[s["doc_id"]]
        ours = [_our_loglikelihood(model, tok, doc["context"], c) for c in doc["choices"]]
        theirs = [float(x[0]) for x in s["filtered_resps"]]
        assert theirs == pytest.approx(ours, abs=1e-3), (s["doc_id"], theirs, ours)
        correct += int(max(range(3), key=lambda k: ours[k]) == doc["label"])
    assert results["results"]["tiny_next_word"]["acc,none"] == pytest.approx(correct / len(docs))
