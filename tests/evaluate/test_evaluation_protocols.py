"""Corpus joins, perplexity presets, batch/BOS invariants, config and table handling of presets.

Token counts are known exactly: the byte tokenizer of conftest.py gives one token per UTF-8 byte.
"""
import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from llm_compression.data import CorpusError, load_text, tokenize_stream, wikitext_rows_from_file
from llm_compression.evaluate import perplexity_of_model
from llm_compression.evaluate.perplexity import perplexity
from llm_compression.evaluate.protocols import (
    C4_WINDOWS,
    ProtocolError,
    expected_windows,
    resolve_protocol,
)

PTB_LINES = [" the cat sat \n", " on the mat \n", " n't <unk> N \n"]


def nbytes(s):
    return len(s.encode("utf-8"))


@pytest.fixture
def ptb_dir(tmp_path):
    (tmp_path / "ptb.test.txt").write_text("".join(PTB_LINES))
    # validation: 12 lines of 30 bytes each after stripping -> known stream lengths
    (tmp_path / "ptb.valid.txt").write_text("".join(f" sentence number {i:03d} is here ok \n" for i in range(12)))
    return tmp_path


WIKI_ORIGINAL = (" \r\n = Title = \r\n \r\n First para .\r\n Second para .\r\n \r\n = = Sub = = \r\n \r\n"
                 " Third para .\r\n")
WIKI_NO_BLANKS = " = Title = \r\n First para .\r\n Second para .\r\n = = Sub = = \r\n Third para .\r\n"


def test_ptb_joins_known_token_counts(ptb_dir, byte_tokenizer):
    sentences = ["the cat sat", "on the mat", "n't <unk> N"]
    expect = {
        "mikolov-lines": "".join(PTB_LINES),
        "space": " ".join(sentences),  # SparseGPT get_ptb
        "blank-line": "\n\n".join(sentences),  # LLM-Pruner process_data
    }
    for join, text in expect.items():
        c = load_text("ptb", "test", path=str(ptb_dir), join=join)
        assert c.text == text
        assert tokenize_stream(byte_tokenizer, c.text).numel() == nbytes(text)
        assert c.protocol["join"] == join and c.protocol["documents"] == 3
    with pytest.raises(CorpusError, match="no join"):
        load_text("ptb", "test", path=str(ptb_dir), join="hub-rows")


def test_wikitext_hub_rows_from_original_file_and_reconstruction(tmp_path, byte_tokenizer):
    # a raw file that still has its whitespace-only lines: rows are exact hub rows
    f = tmp_path / "wiki.test.raw"
    f.write_bytes(WIKI_ORIGINAL.encode())
    rows, added = wikitext_rows_from_file(f.read_text(encoding="utf-8"))
    hub_rows = ["", " = Title = \n", "", " First para .\n", " Second para .\n", "", " = = Sub = = \n", "",
                " Third para .\n"]
    assert added == 0
    c = load_text("wikitext2", "test", path=str(f), join="hub-rows")
    assert c.text == "\n\n".join(hub_rows)  # SparseGPT / LLM-Pruner: "\n\n".join(testdata["text"])
    assert tokenize_stream(byte_tokenizer, c.text).numel() == nbytes("\n\n".join(hub_rows))
    assert c.protocol["rows"] == 9 and c.protocol["blank_rows_reconstructed"] == 0
    # the shared copy has no blank lines: blank rows are put around each heading
    g = tmp_path / "nob" / "wiki.test.raw"
    g.parent.mkdir()
    g.write_bytes(WIKI_NO_BLANKS.encode())
    c2 = load_text("wikitext2", "test", path=str(g.parent), join="hub-rows")
    assert c2.protocol["blank_rows_reconstructed"] == 4
    assert c2.text == "\n\n".join(["", " = Title = \n", "", " First para .\n", " Second para .\n", "",
                                   " = = Sub = = \n", "", " Third para .\n"])
    # default join: non-blank rows without their newline, "\n\n"-joined; same from both files
    d1 = load_text("wikitext2", "test", path=str(f)).text
    d2 = load_text("wikitext2", "test", path=str(g)).text
    assert d1 == d2 == " = Title = \n\n First para .\n\n Second para .\n\n = = Sub = = \n\n Third para ."
    assert tokenize_stream(byte_tokenizer, d1).numel() == nbytes(d1)


def test_c4_local_json_gz_documents_and_joins(tmp_path, byte_tokenizer):
    docs = ["Doc one text.", "Second document, ü.", "Third."]
    f = tmp_path / "c4-validation.00000-of-00008.json.gz"
    with gzip.open(f, "wt", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"text": d, "url": "x"}) + "\n")
    c = load_text("c4", "validation", path=str(tmp_path), join="space", documents=2)
    assert c.text == "Doc one text. Second document, ü." and c.protocol["documents"] == 2
    assert tokenize_stream(byte_tokenizer, c.text).numel() == nbytes(c.text) == 34
    c = load_text("c4", "validation", path=str(f))
    assert c.text == "\n\n".join(docs) and c.protocol["join"] == "documents-blank-line"
    with pytest.raises(CorpusError, match="documents"):
        load_text("ptb", "test", documents=3)


def test_preset_resolution_and_conflicts():
    p = resolve_protocol("llm-pruner", "ptb", seqlen=512)
    assert (p.split, p.join, p.seqlen) == ("valid", "blank-line", 128)
    p = resolve_protocol("sparsegpt", "wikitext2", seqlen=None)
    assert (p.split, p.join, p.seqlen) == ("test", "hub-rows", None)
    p = resolve_protocol("sparsegpt", "c4", seqlen=2048, split="validation")
    assert (p.documents, p.max_windows, p.join) == (1100, 256, "space")
    with pytest.raises(ProtocolError, match="contradicts preset 'llm-pruner'.*'valid'"):
        resolve_protocol("llm-pruner", "ptb", split="test")
    with pytest.raises(ProtocolError, match="last_window"):
        resolve_protocol("sparsegpt", "ptb", last_window="keep")
    with pytest.raises(ProtocolError, match="unknown perplexity preset"):
        resolve_protocol("wanda", "ptb")
    assert resolve_protocol("custom", "ptb", split="train", join="space", seqlen=64).split == "train"
    assert expected_windows(1000, 128) == 7 and expected_windows(1000, 128, last_window="keep") == 8
    assert expected_windows(10**6, 512, max_windows=256) == 256


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_presets_give_documented_window_counts(ptb_dir, tmp_path, tiny_model, byte_tokenizer):
    valid_bytes = nbytes("\n\n".join(f"sentence number {i:03d} is here ok" for i in range(12)))
    r = perplexity_of_model(tiny_model, byte_tokenizer, dataset="ptb", preset="llm-pruner", path=str(ptb_dir),
                            seqlen=512, batch_size=4)
    p = r["protocol"]
    assert (p["split"], p["seqlen"], p["preset"], p["join"]) == ("valid", 128, "llm-pruner", "blank-line")
    assert p["stream_tokens"] == valid_bytes == 12 * 30 + 11 * 2
    assert p["windows"] == valid_bytes // 128 == 2 and p["scored_tokens"] == 2 * 127
    # sparsegpt with seqlen None: the model's max_position_embeddings (256)
    big = tmp_path / "big"
    big.mkdir()
    (big / "ptb.test.txt").write_text("".join(f" w{i} x y z \n" for i in range(200)))
    r = perplexity_of_model(tiny_model, byte_tokenizer, dataset="ptb", preset="sparsegpt", path=str(big),
                            seqlen=None)
    n = nbytes(" ".join(f"w{i} x y z" for i in range(200)))
    assert r["protocol"]["seqlen"] == 256 and r["protocol"]["windows"] == n // 256
    assert r["protocol"]["seqlen_source"] == "model max_position_embeddings"
    # C4 under sparsegpt: at most 256 windows of seqlen from the first 1,100 documents joined by " "
    with gzip.open(tmp_path / "c4.json.gz", "wt") as fh:
        for i in range(1200):
            fh.write(json.dumps({"text": f"document {i:04d}"}) + "\n")
    r = perplexity_of_model(tiny_model, byte_tokenizer, dataset="c4", preset="sparsegpt",
                            path=str(tmp_path / "c4.json.gz"), seqlen=8, batch_size=64)
    assert r["protocol"]["documents"] == 1100 and r["protocol"]["windows"] == C4_WINDOWS
    assert r["protocol"]["stream_tokens"] == 256 * 8 and r["protocol"]["split_tokens"] == 1100 * 13 + 1099


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_batch_size_does_not_change_value(tiny_model):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 250, (600,), generator=g)
    ref = perplexity(tiny_model, ids, seqlen=48, batch_size=1)
    for bs in (5, 12):
        r = perplexity(tiny_model, ids, seqlen=48, batch_size=bs)
        assert r["windows"] == ref["windows"] == 12 and r["scored_tokens"] == ref["scored_tokens"] == 12 * 47
        assert math.isclose(r["perplexity"], ref["perplexity"], rel_tol=1e-5)
    k1 = perplexity(tiny_model, ids[:590], seqlen=48, batch_size=1, bos_token_id=256, last_window="keep")
    k4 = perplexity(tiny_model, ids[:590], seqlen=48, batch_size=4, bos_token_id=256, last_window="keep")
    assert k1["windows"] == 13 and k1["scored_tokens"] == k4["scored_tokens"] == 590  # BOS: all tokens scored
    assert math.isclose(k1["perplexity"], k4["perplexity"], rel_tol=1e-5)


def test_bos_per_window_for_gemma(ptb_dir, tiny_model, byte_tokenizer, monkeypatch):
    r = perplexity_of_model(tiny_model, byte_tokenizer, dataset="ptb", preset="llm-pruner", path=str(ptb_dir))
    assert r["protocol"]["bos"] is False
    monkeypatch.setattr(tiny_model.config, "model_type", "gemma3_text")
    r = perplexity_of_model(tiny_model, byte_tokenizer, dataset="ptb", preset="llm-pruner", path=str(ptb_dir))
    assert r["protocol"]["bos"] is True and r["protocol"]["scored_tokens"] == r["protocol"]["windows"] * 128


def _cfg(**ppl):
    return {"model": {"name": "m", "source": "embedded:smollm2-135m"}, "grid": {},
            "evaluation": {"perplexity": ppl}}


def test_config_presets_names_and_backward_compat():
    from llm_compression.config import ConfigError, evaluations, parse_perplexity_evaluation, validate_config

    old = validate_config(_cfg(seqlen=512, max_tokens=8192, batch_size=4, datasets={"ptb": {"split": "test"}}),
                          check_model=False)
    assert old["evaluation"]["perplexity"]["presets"] == ["sparsegpt"]
    assert evaluations(old) == ["ppl-ptb-sparsegpt", "cost"]
    both = validate_config(_cfg(presets=["sparsegpt", "llm-pruner"], datasets={"ptb": {}, "c4": {}}),
                           check_model=False)
    assert evaluations(both) == ["ppl-ptb-sparsegpt", "ppl-c4-sparsegpt", "ppl-ptb-llm-pruner",
                                 "ppl-c4-llm-pruner", "cost"]
    assert parse_perplexity_evaluation("ppl-ptb-llm-pruner") == ("ptb", "llm-pruner")
    with pytest.raises(ValueError):
        parse_perplexity_evaluation("ppl-ptb")
    with pytest.raises(ValueError):
        parse_perplexity_evaluation("ppl-ptb-wanda", default_preset="sparsegpt")
    assert parse_perplexity_evaluation("ppl-ptb", default_preset="sparsegpt") == ("ptb", "sparsegpt")
    with pytest.raises(ConfigError, match="llm-pruner"):
        validate_config(_cfg(presets=["llm-pruner"], datasets={"ptb": {"split": "test"}}), check_model=False)
    with pytest.raises(ConfigError, match="join"):
        validate_config(_cfg(presets=["custom"], datasets={"ptb": {"join": "hub-rows"}}), check_model=False)


def test_table_keeps_presets_apart_and_expands_zeroshot(tmp_path):
    from llm_compression.io import write_json_atomic
    from llm_compression.report.table import build_table

    variant = {"variant": "dense", "method": "dense", "level": "", "ratio": 0.0, "repeat": 0, "healing": "none",
               "quant": "none"}
    files = []
    for preset, val, cap in (("sparsegpt", 50.0, None), ("llm-pruner", 70.0, 4096)):
        f = tmp_path / f"ppl-ptb-{preset}.json"
        write_json_atomic(f, {"model": "m", "variant": variant, "evaluation": f"ppl-ptb-{preset}",
                              "metrics": {"perplexity": val},
                              "protocol": {"dataset": "ptb", "split": "test", "preset": preset, "seqlen": 128,
                                           "windows": 3, "scored_tokens": 381, "limit_tokens": cap,
                                           "capped": cap is not None}})
        files.append(f)
    f = tmp_path / "zeroshot.json"
    write_json_atomic(f, {"model": "m", "variant": variant, "evaluation": "zeroshot",
                          "metrics": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.6, "acc_norm_stderr": 0.1},
                          "tasks": {"piqa": {"acc": 0.6, "acc_stderr": 0.1, "acc_norm": 0.6, "acc_norm_stderr": 0.1},
                                    "boolq": {"acc": 0.4, "acc_stderr": 0.1, "acc_norm": None}},
                          "protocol": {"harness": "lm-eval 0.4.13", "limit": 10, "source": "offline",
                                       "tasks": {"piqa": {"split": "validation"}, "boolq": {"split": "validation"}}}})
    files.append(f)
    df = build_table(files)
    ppl = df[df.metric == "perplexity"]
    assert sorted(ppl.preset) == ["llm-pruner+cap4096", "sparsegpt"]
    wide = ppl.pivot_table(index="variant", columns=["dataset", "preset"], values="value")
    assert wide.shape == (1, 2)
    zs = df[df.evaluation == "zeroshot"]
    assert set(zs.dataset) == {"piqa", "boolq", "average"}
    assert zs[(zs.dataset == "boolq")].metric.tolist() == ["acc", "acc_stderr"]
    assert set(zs.preset) == {"lm-eval-0shot-limit10-offline"}


def test_bfloat16_record_carries_its_dtype_and_peak_memory(ptb_dir, tiny_checkpoint):
    from llm_compression.evaluate import evaluate_perplexity

    r = evaluate_perplexity(tiny_checkpoint, dataset="ptb", preset="custom", path=str(ptb_dir), seqlen=4,
                            dtype="bfloat16")
    assert r["protocol"]["dtype"] == "bfloat16" and "autocast(bfloat16)" in r["protocol"]["dtype_note"]
    assert r["runtime"]["dtype"] == "float32"  # the weights stay as loaded
    assert r["runtime"]["peak_memory_bytes"] >= r["runtime"]["memory_before_bytes"] > 0
    assert r["runtime"]["cpu_seconds"] >= 0 and r["runtime"]["peak_memory_kind"].startswith("CPU resident set")
    fp32 = evaluate_perplexity(tiny_checkpoint, dataset="ptb", preset="custom", path=str(ptb_dir), seqlen=4)
    assert fp32["protocol"]["dtype"] == "float32"
    assert r["metrics"]["perplexity"] == pytest.approx(fp32["metrics"]["perplexity"], rel=0.01)


def test_float16_on_cpu_refused_before_loading(ptb_dir, tiny_checkpoint, monkeypatch):
    import llm_compression.evaluate as ev

    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ProtocolError, match=r"evaluation dtype 'float16' is refused on CPU.*'bfloat16' or 'float32'"):
        ev.evaluate_perplexity(tiny_checkpoint, dataset="ptb", preset="custom", path=str(ptb_dir), dtype="float16")


def test_config_dtype_is_an_evaluate_param_and_a_table_preset(tmp_path):
    from llm_compression.config import ConfigError, validate_config
    from llm_compression.planning import evaluation_params
    from llm_compression.report.table import preset_label, protocol_label

    default = validate_config(_cfg(datasets={"ptb": {}}), check_model=False)
    assert evaluation_params(default, "ppl-ptb-sparsegpt")["dtype"] == "float32"
    bf16 = validate_config(_cfg(dtype="bfloat16", datasets={"ptb": {}}), check_model=False)
    assert evaluation_params(bf16, "ppl-ptb-sparsegpt")["dtype"] == "bfloat16"  # a change reruns the evaluation
    with pytest.raises(ConfigError, match="float64"):
        validate_config(_cfg(dtype="float64", datasets={"ptb": {}}), check_model=False)
    proto = {"preset": "sparsegpt", "seqlen": 512, "windows": 2, "scored_tokens": 1022, "capped": True,
             "limit_tokens": 1024}
    assert preset_label(proto) == preset_label({**proto, "dtype": "float32"}) == "sparsegpt+cap1024"
    assert preset_label({**proto, "dtype": "bfloat16"}) == "sparsegpt+cap1024+bf16"
    assert protocol_label({**proto, "dtype": "bfloat16"}).endswith("dtype=bfloat16")


def test_cost_and_latency_jobs_do_not_load_the_tokenizer(tiny_checkpoint, monkeypatch):
    """Per-job overhead (issue 15): a tokenizer costs more start-up than a small model; measurements that
    never tokenize text load none."""
    import transformers

    from llm_compression.evaluate import evaluate_cost, evaluate_latency
    from llm_compression.models import load_checkpoint

    model, tok = load_checkpoint(tiny_checkpoint)
    assert tok is not None
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("loaded a tokenizer")))
    m2, none = load_checkpoint(tiny_checkpoint, tokenizer=False)
    assert none is None
    x = torch.randint(3, 256, (1, 8))
    assert torch.equal(m2(x).logits, model(x).logits)
    assert evaluate_cost(tiny_checkpoint, seqlen=8)["metrics"]["sparsity"] == 0
    assert evaluate_latency(tiny_checkpoint, prompt_tokens=4, new_tokens=2, repeats=1, warmup=0)["metrics"]


def test_every_planned_evaluation_runs_through_evaluate_artifact(tiny_checkpoint):
    """The params the planner builds for each evaluation of the study's config (sizes shrunk to the tiny
    model) go to evaluate_artifact as the evaluate job passes them, with the job's thread count: no
    option clashes with the dispatch's own keywords (the latency params carry ``threads``)."""
    from llm_compression.config import read_config_yaml, validate_config
    from llm_compression.evaluate import evaluate_artifact
    from llm_compression.planning import evaluation_params, evaluations

    root = Path(__file__).resolve().parents[2]
    cfg = validate_config(read_config_yaml(root / "config" / "study-embedded.yaml"), base_dir=root, check_model=False)
    small = {"seqlen": 32, "max_tokens": 128, "prompt_tokens": 8, "new_tokens": 2, "repeats": 1, "warmup": 0}
    kinds = set()
    for name in evaluations(cfg):
        params = evaluation_params(cfg, name)
        kind = params.pop("kind")
        if kind == "zeroshot" or (kind == "perplexity" and params.get("dataset") != "ptb"):
            continue  # zero-shot runs in tests/evaluate/test_zeroshot_demo.py; WikiText-2 needs ../shared
        params.update({k: v for k, v in small.items() if k in params})
        rec = evaluate_artifact(tiny_checkpoint, kind, device="cpu", job_threads=1, **params)
        assert rec["metrics"] and rec["protocol"], name
        kinds.add(kind)
    assert kinds == {"perplexity", "cost", "memory", "latency"}
