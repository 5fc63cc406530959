"""Quantization (NF4/NF4-DQ/FP4/int8) and cost metrics (parameters, bytes, MACs, memory, latency) on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from llm_compression.evaluate import evaluate_cost, evaluate_latency, evaluate_memory  # noqa: E402
from llm_compression.evaluate.cost import (  # noqa: E402
    attention_macs_closed_form,
    count_macs,
    count_parameters,
    linear_bits_per_weight,
    logical_numel,
    nm_pattern,
    weight_bytes_in_memory,
)
from llm_compression.models import load_checkpoint, save_checkpoint  # noqa: E402
from llm_compression.modules import dense_weight, prunable_linears  # noqa: E402
from llm_compression.quantize import (  # noqa: E402
    AlreadyQuantizedError,
    NonUniformWidthsError,
    check_options,
    quantize_checkpoint,
)

VOCAB = 256


def tiny_config(layers=2, **kw):
    # every quantized Linear has out_features % 32 == 0: bitsandbytes' AVX512-BF16 CPU kernel needs it
    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    base.update(kw)
    return LlamaConfig(**base)


def tiny_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {f"t{i}": i for i in range(VOCAB - 1)}
    vocab["<unk>"] = VOCAB - 1
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


def save_tiny(path, *, sparsity=0.0, seed=0, layers=2):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(layers)).eval()
    if sparsity:
        with torch.no_grad():
            for lin in prunable_linears(model).values():
                w = lin.weight
                k = int(w.numel() * sparsity)
                idx = w.abs().flatten().argsort()[:k]
                w.view(-1)[idx] = 0.0
    save_checkpoint(model, tiny_tokenizer(), path, {"stage": "test", "sparsity_requested": sparsity})
    return model


IDS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------ quantization

def test_nf4_linear_64x64_counts_4096_parameters():
    lin = nn.Linear(64, 64, bias=False)
    q = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4",
                          compress_statistics=False)
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                 compress_statistics=False)
    q = q.to("cpu")
    assert q.weight.numel() == 2048  # packed: two 4-bit weights per byte
    assert logical_numel(q.weight) == 4096
    assert count_parameters(nn.Sequential(q))["parameters"] == 4096
    # 4096 weights * 4 bit = 2048 bytes + 64 fp32 absmax (one per 64-block) + 16-entry fp32 code
    assert weight_bytes_in_memory(nn.Sequential(q))["weight_bytes_in_memory"] == 2048 + 64 * 4 + 16 * 4


@pytest.mark.parametrize("scheme", ["nf4", "nf4-dq", "fp4", "int8"])
def test_quantize_save_reload_identical_logits_and_exact_zeros(tmp_path, scheme):
    src, out = tmp_path / "src", tmp_path / scheme
    save_tiny(src, sparsity=0.5)
    info = quantize_checkpoint(src, out, scheme=scheme)
    assert info["quantization"]["scheme"] == scheme
    q1, _ = load_checkpoint(out)
    q2, _ = load_checkpoint(out)  # a second, independent load of the saved artifact
    kind = bnb.nn.Linear8bitLt if scheme == "int8" else bnb.nn.Linear4bit
    assert all(isinstance(m, kind) for m in prunable_linears(q1).values())
    with torch.no_grad():
        l1, l2 = q1(IDS).logits, q2(IDS).logits
    assert torch.equal(l1, l2)
    if scheme != "int8":  # dequantizing after the first forward (CPU re-layout, bf16 absmax) matches before it
        q3, _ = load_checkpoint(out)
        for a, b in zip(prunable_linears(q3).values(), prunable_linears(q1).values()):
            torch.testing.assert_close(dense_weight(a), dense_weight(b), rtol=1e-2, atol=1e-6)
    dense, _ = load_checkpoint(src)
    # quantization keeps every pruned zero exactly zero (NF4/FP4/int8 all have an exact 0 code)
    for (n, d), (_, qq) in zip(prunable_linears(dense).items(), prunable_linears(q1).items()):
        zd = dense_weight(d) == 0
        assert zd.float().mean() == pytest.approx(0.5, abs=0.01)
        assert torch.all(dense_weight(qq)[zd] == 0), n
    # logical parameter count is unchanged by packing
    assert count_parameters(q1)["parameters"] == count_parameters(dense)["parameters"]
    if scheme == "int8":  # int8 weights + one fp32 scale per output row, before and after bnb moves the scales
        lin = prunable_linears(dense)
        expect = sum(m.weight.numel() * 8 + m.out_features * 32 for m in lin.values()) / sum(
            m.weight.numel() for m in lin.values())
        fresh, _ = load_checkpoint(out)
        assert linear_bits_per_weight(fresh)["linear_bits_per_weight"] == pytest.approx(expect)
        assert linear_bits_per_weight(q1)["linear_bits_per_weight"] == pytest.approx(expect)  # after forwards
        assert weight_bytes_in_memory(q1) == weight_bytes_in_memory(fresh)
    # and the quantized model is close to, but not equal to, the dense one
    with torch.no_grad():
        ld = dense(IDS).logits
    assert not torch.equal(ld, l1)
    assert (ld - l1).abs().max() < 1.0


def test_refuses_already_quantized_input(tmp_path):
    src = tmp_path / "src"
    save_tiny(src)
    quantize_checkpoint(src, tmp_path / "q", scheme="nf4-dq")
    for scheme in ("nf4", "int8"):
        with pytest.raises(AlreadyQuantizedError, match="already quantized.*nf4"):
            quantize_checkpoint(tmp_path / "q", tmp_path / f"qq-{scheme}", scheme=scheme)
        assert not (tmp_path / f"qq-{scheme}").exists()


def test_scheme_options_only_pass_knobs_that_change_the_scheme():
    from llm_compression.quantize import scheme_options

    cfg = {"compute_dtype": "bfloat16", "blocksize": 128, "int8_threshold": 4.0}
    assert scheme_options("nf4-dq", cfg) == {"compute_dtype": "bfloat16", "blocksize": 128}
    assert scheme_options("int8", cfg) == {"int8_threshold": 4.0}
    with pytest.raises(ValueError, match="unknown quantization 'q8'"):
        scheme_options("q8", cfg)


def test_refuses_per_layer_width_checkpoints(tmp_path):
    save_tiny(tmp_path / "src")
    cfg_path = tmp_path / "src" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["pruned_layer_shapes"] = [{"num_attention_heads": 4}, {"num_attention_heads": 2}]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(NonUniformWidthsError, match="per-layer widths.*'int8' cannot be built"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "q", scheme="int8")
    assert not (tmp_path / "q").exists()


def test_bad_options_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match="unknown quantization 'nf3'"):
        check_options("nf3")
    check_options("nf4", blocksize=32)
    with pytest.raises(ValueError, match="blocksize 100"):
        check_options("nf4", blocksize=100)
    with pytest.raises(ValueError, match="compute_dtype 'int4'"):
        check_options("nf4", compute_dtype="int4")
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_checkpoint(tmp_path / "does-not-exist", tmp_path / "o", scheme="q4")


def _save_wide(path, hidden=256, inter=512, layers=1):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(layers, hidden_size=hidden, intermediate_size=inter,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    save_checkpoint(model, tiny_tokenizer(), path, {})
    return model


def test_blocksize_is_applied_saved_and_reloaded(tmp_path):
    src = tmp_path / "src"
    _save_wide(src)
    quantize_checkpoint(src, tmp_path / "b64", scheme="nf4")
    quantize_checkpoint(src, tmp_path / "b256", scheme="nf4", blocksize=256)
    m64, _ = load_checkpoint(tmp_path / "b64")
    m256, _ = load_checkpoint(tmp_path / "b256")
    w64 = m64.model.layers[0].mlp.up_proj.weight
    w256 = m256.model.layers[0].mlp.up_proj.weight
    assert w64.quant_state.blocksize == 64 and w256.quant_state.blocksize == 256
    assert w256.quant_state.absmax.numel() * 4 == w64.quant_state.absmax.numel()
    # bits/weight: 4 + 32/blocksize (one fp32 absmax per block)
    assert linear_bits_per_weight(m64)["linear_bits_per_weight"] == pytest.approx(4 + 32 / 64)
    assert linear_bits_per_weight(m256)["linear_bits_per_weight"] == pytest.approx(4 + 32 / 256)
    m256b, _ = load_checkpoint(tmp_path / "b256")
    with torch.no_grad():
        assert torch.equal(m256(IDS).logits, m256b(IDS).logits)


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_shapes_the_avx512_cpu_kernel_cannot_run_still_run(tmp_path):
    """k_proj 64 -> 16 (not a multiple of 32) and blocksize 128 > input width 64 would crash bitsandbytes'
    AVX512-BF16 CPU kernel at the first no-grad forward; load_checkpoint routes them to the generic path."""
    from llm_compression.modules import bnb_cpu_fallback

    torch.manual_seed(0)
    m = LlamaForCausalLM(tiny_config(2, num_attention_heads=8, num_key_value_heads=2)).eval()
    save_checkpoint(m, tiny_tokenizer(), tmp_path / "src", {})
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", scheme="nf4-dq", blocksize=128)
    q1, _ = load_checkpoint(tmp_path / "q")
    q2, _ = load_checkpoint(tmp_path / "q")
    assert q1.model.layers[0].self_attn.k_proj.weight.quant_state.blocksize == 128
    with torch.no_grad():
        l1, l2 = q1(IDS).logits, q2(IDS).logits
        ld = m(IDS).logits
    assert torch.equal(l1, l2) and (l1 - ld).abs().max() < 1.0
    from bitsandbytes.functional import has_avx512bf16
    from transformers import AutoModelForCausalLM

    raw = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    switched = bnb_cpu_fallback(raw)
    if has_avx512bf16():  # all but down_proj (input 128 = blocksize, output 64): inputs of 64 < 128
        assert len(switched) == 2 * 6 and "model.layers.0.self_attn.k_proj" in switched
        assert not any("down_proj" in n for n in switched)
    else:
        assert switched == []
    with torch.no_grad():
        assert torch.equal(raw(IDS).logits, l1)


def test_nf4_dq_bits_per_weight_near_4127(tmp_path):
    # a layer large enough that the per-layer code tables are negligible: 4 + 8/64 + 32/(64*256)
    src = tmp_path / "src"
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(1, hidden_size=256, intermediate_size=1024, num_attention_heads=4,
                                         num_key_value_heads=4)).eval()
    save_checkpoint(model, tiny_tokenizer(), src, {})
    quantize_checkpoint(src, tmp_path / "q", scheme="nf4-dq")
    q, _ = load_checkpoint(tmp_path / "q")
    bpw = linear_bits_per_weight(q)["linear_bits_per_weight"]
    assert bpw == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-3)
    r = evaluate_cost(tmp_path / "q", seqlen=8)["metrics"]
    # on disk: the same plus the per-layer code tables (16 + 256 fp32) and a small JSON header
    assert bpw < r["linear_bits_per_weight_on_disk"] < bpw + 0.2
    assert r["linear_bits_per_weight_with_code_tables"] == pytest.approx(r["linear_bits_per_weight_on_disk"], abs=0.02)
    assert r["parameters"] == count_parameters(model)["parameters"]


# ------------------------------------------------------------------------------------------------ MACs

def _closed_form_macs(cfg: LlamaConfig, L: int) -> tuple[int, int]:
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hd = h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per_layer_linear = h * q + 2 * h * kv + q * h + 3 * h * i
    linear = L * (cfg.num_hidden_layers * per_layer_linear + h * v)
    attn = cfg.num_hidden_layers * 2 * cfg.num_attention_heads * L * L * hd
    return linear, attn


@pytest.mark.parametrize("quantized", [False, True])
def test_macs_match_closed_form_at_two_seqlens(tmp_path, quantized):
    cfg = tiny_config(1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    if quantized:  # 4-bit Linear layers are counted like their dense equivalents
        save_checkpoint(model, tiny_tokenizer(), tmp_path / "src", {})
        quantize_checkpoint(tmp_path / "src", tmp_path / "q", scheme="nf4")
        model, _ = load_checkpoint(tmp_path / "q")
    got = {}
    for L in (16, 64):
        r = count_macs(model, L)
        lin, att = _closed_form_macs(cfg, L)
        assert r["macs_linear"] == lin
        assert r["macs_attention_scores"] + r["macs_attention_values"] == att
        assert r["macs"] == lin + att
        got[L] = r
    # the linear part grows with L, the attention part with L^2
    assert got[64]["macs_linear"] == 4 * got[16]["macs_linear"]
    assert got[64]["macs_attention_scores"] == 16 * got[16]["macs_attention_scores"]


def test_macs_read_pruned_head_counts_from_modules():
    """A model whose modules have fewer heads than its config says is counted by its modules."""
    cfg = tiny_config(1)
    model = LlamaForCausalLM(cfg).eval()
    attn = model.model.layers[0].self_attn
    hd = attn.head_dim
    # drop one KV group (2 query heads + 1 kv head) the way structured pruning would; config untouched
    attn.q_proj = nn.Linear(64, 2 * hd, bias=False)
    attn.k_proj = nn.Linear(64, 1 * hd, bias=False)
    attn.v_proj = nn.Linear(64, 1 * hd, bias=False)
    attn.o_proj = nn.Linear(2 * hd, 64, bias=False)
    L = 32
    r = count_macs(model, L)
    assert r["attention_q_heads_total"] == 2 and r["attention_kv_heads_total"] == 1
    s, v = attention_macs_closed_form({"q_heads": 2, "kv_heads": 1, "head_dim": hd, "head_dim_v": hd}, L, L)
    assert (r["macs_attention_scores"], r["macs_attention_values"]) == (s, v) == (2 * L * L * hd, 2 * L * L * hd)
    lin = L * (64 * 2 * hd * 2 + 2 * 64 * hd + 3 * 64 * 128 + 64 * VOCAB)
    assert r["macs_linear"] == lin


# ---------------------------------------------------------------------------------- cost, memory, latency

@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_cost_record_dense_vs_unstructured_vs_nf4(tmp_path):
    save_tiny(tmp_path / "dense")
    save_tiny(tmp_path / "sparse", sparsity=0.5)
    quantize_checkpoint(tmp_path / "sparse", tmp_path / "sparse-nf4", scheme="nf4-dq")
    d = evaluate_cost(tmp_path / "dense", seqlen=16)
    s = evaluate_cost(tmp_path / "sparse", seqlen=16)
    q = evaluate_cost(tmp_path / "sparse-nf4", seqlen=16)
    dm, sm, qm = d["metrics"], s["metrics"], q["metrics"]
    # zeros are reported as zeros, and nothing else changes
    assert dm["parameters"] == sm["parameters"] == qm["parameters"]
    assert sm["nonzero_parameters"] == dm["nonzero_parameters"] - sm["zero_weights"]
    assert qm["nonzero_parameters"] == sm["nonzero_parameters"]
    assert sm["macs"] == dm["macs"] == qm["macs"]
    assert sm["weight_bytes_in_memory"] == dm["weight_bytes_in_memory"]
    assert abs(sm["disk_bytes"] - dm["disk_bytes"]) < 1024
    assert dm["linear_bits_per_weight"] == 32.0
    assert qm["weight_bytes_in_memory"] < dm["weight_bytes_in_memory"]
    assert qm["parameters_by_module_type"]["Linear4bit"] == dm["parameters_by_module_type"]["Linear"] - 64 * VOCAB
    assert any("no N:M pattern; from pruning" in n for n in s["notes"]) and len(d["notes"]) == 1
    assert any("nf4-dq" in n for n in q["notes"])
    json.dumps(q)  # one JSON record


def test_nm_pattern_note():
    model = LlamaForCausalLM(tiny_config(1)).eval()
    assert nm_pattern(model) is None
    with torch.no_grad():
        for lin in prunable_linears(model).values():
            w = lin.weight.view(lin.weight.shape[0], -1, 4)
            idx = w.abs().argsort(-1)[..., :2]
            w.scatter_(-1, idx, 0.0)
    assert nm_pattern(model) == "2:4"


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_memory_probe_fresh_process(tmp_path):
    save_tiny(tmp_path / "m")
    r = evaluate_memory(tmp_path / "m", seqlen=32, threads=1)["metrics"]
    assert r["device"] == "cpu" and r["threads"] == 1
    assert r["rss_after_load_bytes"] > r["rss_after_imports_bytes"] > 0
    assert r["peak_memory_bytes"] >= r["rss_after_load_bytes"] * 0.9
    # the resident set split into anonymous and file-backed pages at each stage (Linux)
    for stage, total in (("after_imports", "rss_after_imports_bytes"), ("after_load", "rss_after_load_bytes")):
        anon, file = r[f"rss_anon_{stage}_bytes"], r[f"rss_file_{stage}_bytes"]
        assert anon > 0 and file > 0 and anon + file == pytest.approx(r[total], rel=0.05)
    assert r["rss_anon_after_forward_bytes"] > 0 and r["rss_file_after_forward_bytes"] > 0


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_latency_protocol(tmp_path):
    save_tiny(tmp_path / "m")
    r = evaluate_latency(tmp_path / "m", prompt_tokens=16, new_tokens=4, repeats=3, warmup=1)["metrics"]
    assert r["prefill_seconds_min"] <= r["prefill_seconds_median"] <= r["prefill_seconds_max"]
    assert r["decode_tokens_per_second_min"] <= r["decode_tokens_per_second_median"] <= r["decode_tokens_per_second_max"]
    assert r["repeats"] == 3 and r["threads"] == torch.get_num_threads() and r["device"] == "cpu"
    # every timed repeat is kept, and the summaries are of exactly those values
    assert len(r["prefill_seconds_repeats"]) == len(r["decode_tokens_per_second_repeats"]) == 3
    assert min(r["decode_tokens_per_second_repeats"]) == r["decode_tokens_per_second_min"]
    assert max(r["prefill_seconds_repeats"]) == r["prefill_seconds_max"]
    assert sorted(r["prefill_seconds_repeats"])[1] == r["prefill_seconds_median"]
    with pytest.raises(ValueError, match="repeats 0"):
        evaluate_latency(tmp_path / "m", repeats=0)


# ------------------------------------------------------------------------------------ config and table

def _raw_config():
    return {"model": {"name": "m", "source": "embedded:smollm2-135m"}, "grid": {"quantization": ["none", "int8"]},
            "evaluation": {"perplexity": {"datasets": {"ptb": {"split": "test"}}}}}


def test_config_cost_sections_defaults_and_booleans():
    from llm_compression.config import ConfigError, evaluation_options, evaluations, validate_config

    cfg = validate_config(_raw_config(), check_model=False)
    assert evaluations(cfg) == ["ppl-ptb-sparsegpt", "cost"]  # memory and latency only when enabled
    assert evaluation_options(cfg, "cost") == {"seqlen": 512}
    assert evaluation_options(cfg, "latency") == {"prompt_tokens": 128, "new_tokens": 32, "repeats": 5,
                                                  "warmup": 1, "threads": 2, "seed": 0}
    assert cfg["quantize"] == {"compute_dtype": "float32", "blocksize": 64, "int8_threshold": 6.0}
    raw = _raw_config()
    raw["evaluation"].update(cost=False, memory=True, latency={"enabled": True, "repeats": 3})
    cfg = validate_config(raw, check_model=False)
    assert evaluations(cfg) == ["ppl-ptb-sparsegpt", "memory", "latency"]
    assert evaluation_options(cfg, "latency")["repeats"] == 3
    for bad in ({"quantize": {"blocksize": 48}}, {"grid": {"quantization": ["nf2"]}},
                {"evaluation": {"perplexity": {}, "latency": {"repeats": 0}}}):
        raw = _raw_config()
        raw.update(bad)
        with pytest.raises(ConfigError):
            validate_config(raw, check_model=False)


def test_table_rows_of_cost_memory_latency_records():
    from llm_compression.report.table import rows_from_record

    variant = {"variant": "dense", "method": "dense", "level": "", "ratio": 0.0, "repeat": 0, "healing": "none",
               "quant": "none"}
    base = {"model": "m", "variant": variant}
    rows = rows_from_record({**base, "evaluation": "memory", "protocol": {"seqlen": 512},
                             "metrics": {"peak_memory_bytes": 10, "rss_after_load_bytes": 5, "device": "cpu"}})
    assert {r["metric"] for r in rows} == {"peak_memory_bytes", "rss_after_load_bytes"}
    assert rows[0]["protocol"] == "seqlen=512"
    rows = rows_from_record({**base, "evaluation": "latency",
                             "protocol": {"prompt_tokens": 8, "new_tokens": 2, "repeats": 3, "warmup": 1,
                                          "threads": 2, "device": "cpu"},
                             "metrics": {"prefill_seconds_median": 0.1, "decode_tokens_per_second_median": 9.0}})
    assert rows[0]["protocol"] == "prompt=8 new=2 repeats=3 warmup=1 threads=2 device=cpu"


def test_latency_is_timed_with_its_threads_while_the_job_claims_the_runs_cores(tmp_path):
    """The timed forwards run with ``evaluation.latency.threads``; a local latency job claims every core of the
    run (nothing shares the machine while it times) and records how many it held; torch's count is restored."""
    from llm_compression.config import validate_config
    from llm_compression.evaluate import evaluate_artifact
    from llm_compression.planning import Plan

    save_tiny(tmp_path / "m")
    before = torch.get_num_threads()
    rec = evaluate_artifact(tmp_path / "m", "latency", device="cpu", job_threads=4, prompt_tokens=8, new_tokens=2,
                            repeats=1, warmup=0, threads=1)
    assert rec["metrics"]["threads"] == rec["protocol"]["threads"] == 1
    assert rec["runtime"]["job_cores"] == 4 and torch.get_num_threads() == before
    raw = _raw_config()
    raw["evaluation"]["latency"] = {"enabled": True, "threads": 2}
    plan = Plan(validate_config(raw, check_model=False))
    assert plan.evaluation_threads("latency", local_cores=16) == 16  # local run: every core
    assert plan.evaluation_threads("latency", local_cores=1) == 2  # never fewer than it times with
    assert plan.evaluation_threads("latency") == 2  # cluster executor: its own allocation
    assert plan.evaluation_threads("cost", local_cores=16) == plan.resources.threads("evaluate")
