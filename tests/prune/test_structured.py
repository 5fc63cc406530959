"""Structured pruning (LLM-Pruner style) on tiny random Llama / Gemma-3 models with grouped-query attention."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from llm_compression.prune import needs_calibration, prune_model
from llm_compression.prune.structured import (
    StructuredPruningError,
    build_groups,
    collect_gradients,
    load_pruned,
    needs_structured_loader,
    prune_structured,
)
from llm_compression.prune.structured.importance import group_importance

SRC = str(Path(__file__).resolve().parents[2] / "src")


def llama(n_q=8, n_kv=2, *, head_dim=8, hidden=64, inter=96, layers=4, tied=True, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=n_q, num_key_value_heads=n_kv, head_dim=head_dim, vocab_size=128,
                      tie_word_embeddings=tied, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(cfg).eval()


def tiny_tokenizer():
    """A 128-token word-level tokenizer built offline, so checkpoints load through load_checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(128)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w0", bos_token="w1", eos_token="w2")


def ids(n=4, t=12, seed=1):
    return torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(seed))


# --- shapes and config fields ---------------------------------------------------------------------

@pytest.mark.parametrize("n_q,n_kv", [(8, 2), (6, 2)])
def test_block_uniform_shapes_and_config(n_q, n_kv):
    hidden = n_q * 8
    m = llama(n_q, n_kv, hidden=hidden)
    r = prune_structured(m, level="block", ratio=0.5, importance="element1", calib_ids=ids(), layer_range=[0, 4])
    rep = n_q // n_kv
    q_keep = n_kv * (rep - int(rep * 0.5 + 0.5 - 1e-9))  # ties prune fewer: 8/2 -> 4 heads, 6/2 -> 4 heads
    assert q_keep == 4
    for blk in m.model.layers:
        a = blk.self_attn
        assert a.q_proj.weight.shape == (q_keep * 8, hidden)
        assert a.o_proj.weight.shape == (hidden, q_keep * 8)
        assert a.k_proj.weight.shape == (n_kv * 8, hidden) and a.v_proj.weight.shape == (n_kv * 8, hidden)
        assert a.num_key_value_groups == q_keep // n_kv
        assert blk.mlp.gate_proj.weight.shape == (48, hidden) and blk.mlp.down_proj.weight.shape == (hidden, 48)
    c = m.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size, c.hidden_size) == \
        (q_keep, n_kv, 8, 48, hidden)
    assert not hasattr(c, "pruned_layer_shapes") and r["uniform"] and r["plain_loadable"]
    assert r["parameters_after"] == sum(p.numel() for p in m.parameters())
    assert 0 < r["parameter_ratio"] < 0.5  # embeddings and norms are not pruned at the block level


def test_uniform_widths_the_config_rejects_fall_back_to_per_layer_shapes():
    """8 -> 6 query heads with hidden 64: LlamaConfig refuses 64 % 6 != 0 on save/load."""
    m = llama(8, 2)
    r = prune_structured(m, level="block", ratio=0.25, importance="l1", layer_range=[0, 4])
    assert r["uniform"] and not r["plain_loadable"]
    assert m.config.num_attention_heads == 8  # the valid global number stays
    assert [s["num_attention_heads"] for s in m.config.pruned_layer_shapes] == [6, 6, 6, 6]
    m(ids())


def test_block_default_range_skips_first_and_last_layer():
    m = llama(8, 2)
    r = prune_structured(m, level="block", ratio=0.5, importance="l2")
    shapes = r["layer_shapes"]
    assert r["layer_range"] == [1, 3] and not r["uniform"]
    assert shapes[0] == shapes[3] == {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 8,
                                      "intermediate_size": 96}
    assert shapes[1]["num_attention_heads"] == 4 and shapes[1]["intermediate_size"] == 48
    assert m.config.pruned_layer_shapes[1] == {"num_attention_heads": 4, "num_key_value_heads": 2,
                                               "intermediate_size": 48}


def test_kv_group_unit_prunes_kv_heads_with_their_query_heads():
    m = llama(8, 2, layers=3)
    prune_structured(m, level="block", ratio=0.5, importance="l1", attention="kv_group", layer_range=[0, 3])
    a = m.model.layers[0].self_attn
    assert a.k_proj.out_features == 8 and a.q_proj.out_features == 32 and a.num_key_value_groups == 4
    assert m.config.num_key_value_heads == 1 and m.config.num_attention_heads == 4


@pytest.mark.parametrize("tied", [True, False])
def test_channel_level_prunes_hidden_everywhere_and_keeps_ties(tied):
    m = llama(6, 2, hidden=48, tied=tied)
    r = prune_structured(m, level="channel", ratio=0.25, importance="element1", calib_ids=ids())
    assert m.config.hidden_size == 36 and r["hidden_size"] == 36 and r["uniform"]
    assert m.model.embed_tokens.weight.shape == (128, 36) and m.lm_head.weight.shape == (128, 36)
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied
    assert m.model.norm.weight.shape == (36,)
    for blk in m.model.layers:
        assert blk.input_layernorm.weight.shape == (36,) and blk.post_attention_layernorm.weight.shape == (36,)
        assert blk.self_attn.q_proj.weight.shape == (48, 36) and blk.self_attn.o_proj.weight.shape == (36, 48)
        assert blk.mlp.up_proj.weight.shape == (96, 36) and blk.mlp.down_proj.weight.shape == (36, 96)
    assert m.config.head_dim == 8  # explicit: hidden_size / num_heads no longer gives it
    m(ids())


def test_ratio_zero_changes_nothing():
    for level in ("block", "channel"):
        m = llama(8, 2)
        x = ids()
        before = m(x).logits
        r = prune_structured(m, level=level, ratio=0.0, importance="element1", calib_ids=x)
        assert r["parameters_after"] == r["parameters_before"]
        assert torch.equal(m(x).logits, before)


# --- importance ------------------------------------------------------------------------------------

def _plant_dead_head(m, layer, head, d=8):
    a = m.model.layers[layer].self_attn
    with torch.no_grad():
        a.q_proj.weight[head * d:(head + 1) * d] = 0
        a.o_proj.weight[:, head * d:(head + 1) * d] = 0


@pytest.mark.parametrize("imp", ["element1", "element2", "vector", "l1", "l2", "taylor"])
def test_planted_unimportant_head_and_channel_go_first(imp):
    m = llama(8, 2)
    _plant_dead_head(m, 1, 5)  # head 5 belongs to key/value group 1 (heads 4..7)
    mlp = m.model.layers[2].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[17] = 0
        mlp.up_proj.weight[17] = 0
        mlp.down_proj.weight[:, 17] = 0
    r = prune_structured(m, level="block", ratio=0.25, importance=imp, calib_ids=ids(), layer_range=[0, 4])
    got = {(g["kind"], g["layer"]): g["removed"] for g in r["groups"]}
    assert 5 in got[("query_head", 1)] and len(got[("query_head", 1)]) == 2  # one per key/value group
    assert 17 in got[("mlp_channel", 2)]


@pytest.mark.parametrize("imp", ["element1", "l1"])
def test_planted_unimportant_hidden_channel_goes_first(imp):
    m = llama(8, 2)
    j = 11
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 1 and p.shape[0] == 64:  # norms
                p[j] = 0
            elif name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight",
                                "up_proj.weight", "embed_tokens.weight")):
                p[:, j] = 0
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p[j] = 0
    r = prune_structured(m, level="channel", ratio=8 / 64, importance=imp, calib_ids=ids())
    assert j in r["groups"][0]["removed"] and len(r["groups"][0]["removed"]) == 8


def test_channel_keep_count_is_a_multiple_of_the_head_count():
    msgs = []
    m = llama(9, 3, hidden=72)
    r = prune_structured(m, level="channel", ratio=0.3, importance="l2", log=msgs.append)
    assert r["hidden_size"] == 54 and r["plain_loadable"]  # 72 * 0.7 = 50.4 -> 54 = 6 * 9
    assert any("rounded from 50 to 54" in s for s in msgs)


def test_element1_and_element2_match_brute_force():
    """Group scores equal sums of |w*g| (and the Fisher-corrected form) computed by hand."""
    m = llama(8, 2, layers=2)
    x = ids(3, 10)
    gsets = build_groups(m, "block", layer_range=[0, 2])
    names = {mm.name for gs in gsets for mm in gs.members}
    grads = collect_gradients(m, x, names, second_order=True)
    params = dict(m.named_parameters())
    # reference gradients, sample by sample
    per_sample = []
    for j in range(3):
        m.zero_grad()
        m(input_ids=x[j:j + 1], labels=x[j:j + 1]).loss.backward()
        per_sample.append({n: params[n].grad.clone() for n in names})
    m.zero_grad()
    g = {n: sum(ps[n] for ps in per_sample) / 3 for n in names}
    fisher = {n: sum(ps[n] ** 2 for ps in per_sample) / 3 for n in names}
    for n in names:
        torch.testing.assert_close(grads[n]["grad"], g[n], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(grads[n]["fisher"], fisher[n], rtol=1e-3, atol=1e-9)
    s1 = group_importance(gsets, m, "element1", grads=grads)
    s2 = group_importance(gsets, m, "element2", grads=grads, aggregation="max")
    sv = group_importance(gsets, m, "vector", grads=grads, aggregation="mean")
    q, o = params["model.layers.1.self_attn.q_proj.weight"], params["model.layers.1.self_attn.o_proj.weight"]
    gq, go = g["model.layers.1.self_attn.q_proj.weight"], g["model.layers.1.self_attn.o_proj.weight"]
    fq, fo = fisher["model.layers.1.self_attn.q_proj.weight"], fisher["model.layers.1.self_attn.o_proj.weight"]
    h = 3
    sl = slice(h * 8, (h + 1) * 8)
    e1 = (q[sl] * gq[sl]).abs().sum() + (o[:, sl] * go[:, sl]).abs().sum()
    e2q = (q[sl] * gq[sl] - 0.5 * q[sl] ** 2 * fq[sl]).abs().sum()
    e2o = (o[:, sl] * go[:, sl] - 0.5 * o[:, sl] ** 2 * fo[:, sl]).abs().sum()
    vec = ((q[sl] * gq[sl]).sum().abs() + (o[:, sl] * go[:, sl]).sum().abs()) / 2
    idx = [i for i, gs in enumerate(gsets) if gs.kind == "query_head" and gs.layer == 1][0]
    torch.testing.assert_close(s1[idx][h].float(), e1.detach(), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(s2[idx][h].float(), torch.maximum(e2q, e2o).detach(), rtol=1e-3, atol=1e-9)
    torch.testing.assert_close(sv[idx][h].float(), vec.detach(), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("second_order", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients_and_keeps_fewer_activations(second_order):
    """Taylor importance with each decoder block recomputed in the backward pass: the gradients (and Fisher
    terms) are bit for bit those of the plain pass, the tensors autograd keeps for the backward pass are
    fewer bytes, and the blocks' forward is the class's again afterwards."""
    from llm_compression.prune.structured.importance import checkpointed_blocks

    m = llama(8, 2, layers=4)
    x = ids(4, 24)
    names = {n for n, _ in m.named_parameters() if ".layers." in n}
    plain = collect_gradients(m, x, names, second_order=second_order, batch_size=2)
    ckpt = collect_gradients(m, x, names, second_order=second_order, batch_size=2, gradient_checkpointing=True)
    for n in names:
        for k in plain[n]:
            assert torch.equal(plain[n][k], ckpt[n][k]), (n, k)
    assert all("forward" not in vars(layer) for layer in m.model.layers)

    def saved_bytes(checkpointing):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        import contextlib
        ctx = checkpointed_blocks(m) if checkpointing else contextlib.nullcontext()
        with ctx, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(input_ids=x, labels=x, use_cache=False).loss
        return total[0]

    assert saved_bytes(True) < 0.6 * saved_bytes(False)


def test_taylor_pruning_with_gradient_checkpointing_keeps_the_same_groups():
    a, b = llama(8, 2, layers=4), llama(8, 2, layers=4)
    x = ids(4, 16)
    ra = prune_model(a, method="llm-pruner", ratio=0.25, level="block", importance="taylor", calib_ids=x)
    rb = prune_model(b, method="llm-pruner", ratio=0.25, level="block", importance="taylor", calib_ids=x,
                     gradient_checkpointing=True)
    assert ra["structured"]["groups"] == rb["structured"]["groups"]
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(ta, tb)


def test_random_importance_is_seeded():
    a, b, c = llama(), llama(), llama()
    ra = prune_structured(a, level="block", ratio=0.5, importance="random", seed=3)
    rb = prune_structured(b, level="block", ratio=0.5, importance="random", seed=3)
    rc = prune_structured(c, level="block", ratio=0.5, importance="random", seed=4)
    assert ra["groups"] == rb["groups"] and ra["groups"] != rc["groups"]


# --- snapping, refusals ----------------------------------------------------------------------------

def test_nine_by_three_heads_snap_or_refuse():
    """SmolLM2's 9 query / 3 key-value heads: 20% of 3 heads per group is no whole head."""
    msgs = []
    m = llama(9, 3, hidden=72)
    r = prune_structured(m, level="block", ratio=0.2, importance="l2", layer_range=[0, 4], log=msgs.append)
    assert any("snapped 0.6 of 3 query heads per key/value head to 1" in s for s in msgs)
    assert m.config.num_attention_heads == 6 and m.config.num_key_value_heads == 3
    m(ids())
    m2 = llama(9, 3, hidden=72)
    before = {k: v.clone() for k, v in m2.state_dict().items()}
    with pytest.raises(StructuredPruningError, match=r"0\.6.*not a whole number.*snap: true"):
        prune_structured(m2, level="block", ratio=0.2, importance="l2", snap=False)
    assert all(torch.equal(before[k], v) for k, v in m2.state_dict().items())  # refused before any change
    m3 = llama(9, 3, hidden=72)
    prune_structured(m3, level="block", ratio=0.2, importance="l2", attention="kv_group", layer_range=[0, 4])
    assert m3.config.num_key_value_heads == 2 and m3.config.num_attention_heads == 6
    assert r["groups"][0]["after"] == 6


@pytest.mark.parametrize("kw,match", [
    ({"level": "depth"}, "level 'depth'"),
    ({"importance": "hessian"}, "importance 'hessian'"),
    ({"aggregation": "prod"}, "aggregation 'prod'"),
    ({"attention": "heads"}, "attention unit 'heads'"),
    ({"layer_range": [3, 1]}, "layer_range"),
    ({"ratio": 1.0}, "outside"),
    ({"importance": "element1"}, "calibration data"),
])
def test_bad_options_are_refused(kw, match):
    args = {"level": "block", "ratio": 0.5, "importance": "l1", **kw}
    with pytest.raises(StructuredPruningError, match=match):
        prune_structured(llama(), **args)


def test_prune_model_dispatch():
    assert needs_calibration("llmpruner-element2") and not needs_calibration("llmpruner-random")
    m = llama(8, 2)
    r = prune_model(m, method="llmpruner-vector", level="channel", ratio=0.25, calib_ids=ids(), batch_size=2)
    assert r["structured"]["hidden_size"] == 48 and r["sparsity_after"] < 0.01
    with pytest.raises(ValueError, match="level"):
        prune_model(llama(), method="llmpruner-l1", level="unstructured", ratio=0.5)


# --- forward, cached generation, reload in a fresh process -----------------------------------------

def test_cached_generation_after_pruning_matches_uncached():
    for level, kw in (("block", {}), ("channel", {}), ("block", {"attention": "kv_group"})):
        m = llama(6, 2, hidden=48)
        prune_structured(m, level=level, ratio=0.4, importance="element1", calib_ids=ids(), **kw)
        prompt = ids(1, 5, seed=7)
        a = m.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        b = m.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
        assert a.shape == (1, 13) and torch.equal(a, b)


_RELOAD = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM
    from llm_compression.models import load_checkpoint
    x = torch.load(sys.argv[1])
    out = {}
    for d in sys.argv[2:]:
        m, _ = load_checkpoint(d)
        out[d] = {"ours": m(x).logits}
        try:
            out[d]["plain"] = AutoModelForCausalLM.from_pretrained(d).eval()(x).logits
        except Exception as e:
            out[d]["plain_error"] = type(e).__name__ + ": " + str(e)[:200]
    torch.save(out, sys.argv[1] + ".out")
""")


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_reload_in_fresh_process_gives_identical_logits(tmp_path):
    x = ids(2, 10, seed=5)
    cases = {
        "uniform_block": dict(level="block", ratio=0.5, importance="element1", layer_range=[0, 4]),
        "nonuniform_rejected": dict(level="block", ratio=0.25, importance="l2", layer_range=[0, 4]),
        "nonuniform_block": dict(level="block", ratio=0.5, importance="element2"),
        "nonuniform_kv": dict(level="block", ratio=0.5, importance="vector", attention="kv_group"),
        "channel": dict(level="channel", ratio=0.3, importance="element1"),
        "dense": dict(level="block", ratio=0.0, importance="l1"),
    }
    want, dirs = {}, []
    for name, kw in cases.items():
        m = llama(8, 2, tied=name != "channel")
        r = prune_structured(m, calib_ids=ids(), **kw)
        d = tmp_path / name
        m.save_pretrained(d)
        tiny_tokenizer().save_pretrained(d)
        (d / "compression.json").write_text(json.dumps({"result": {"structured": {"plain_loadable": r["plain_loadable"]}}}))
        with torch.no_grad():
            want[str(d)] = m(x).logits
        dirs.append(str(d))
    torch.save(x, tmp_path / "x.pt")
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", _RELOAD, str(tmp_path / "x.pt"), *dirs], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "x.pt.out")
    for name, d in zip(cases, dirs):
        assert torch.equal(got[d]["ours"], want[d]), name
        if name.startswith("nonuniform"):
            assert needs_structured_loader(d)
            assert "size mismatch" in got[d]["plain_error"] or "mismatch" in got[d]["plain_error"], got[d]
        else:
            assert torch.equal(got[d]["plain"], want[d]), name


def test_load_pruned_in_process_roundtrip(tmp_path):
    m = llama(6, 2, hidden=48)
    prune_structured(m, level="block", ratio=0.5, importance="l1")
    m.save_pretrained(tmp_path)
    m2, tok = load_pruned(tmp_path)
    assert tok is None
    x = ids()
    assert torch.equal(m2(x).logits, m(x).logits)
    assert [b.self_attn.num_key_value_groups for b in m2.model.layers] == [3, 2, 2, 3]  # 1.5 of 3 heads per KV head snaps to 1


@pytest.mark.parametrize("scheme", ["nf4-dq", "fp4"])
def test_quantizing_per_layer_width_checkpoint_roundtrips(tmp_path, scheme):
    """Per-layer widths: 4-bit layers built with bitsandbytes directly; the saved checkpoint reloads
    through load_checkpoint with the same widths, the same quant states and identical logits."""
    import bitsandbytes as bnb

    from llm_compression.models import load_checkpoint
    from llm_compression.modules import dense_weight
    from llm_compression.quantize import quantize_checkpoint

    m = llama(8, 2, hidden=64, inter=128)
    prune_structured(m, level="block", ratio=0.5, importance="l1")  # first/last layers kept: widths differ
    with torch.no_grad():
        m.model.layers[1].mlp.down_proj.weight[:, :7] = 0  # exact zeros must survive 4-bit
    m.save_pretrained(tmp_path / "p")
    tiny_tokenizer().save_pretrained(tmp_path / "p")
    assert needs_structured_loader(tmp_path / "p")
    info = quantize_checkpoint(tmp_path / "p", tmp_path / "q", scheme=scheme, blocksize=32)
    assert info["quantization"]["per_layer_widths"]["layers_4bit"] == 4 * 7
    q, tok = load_checkpoint(tmp_path / "q")
    assert tok is not None
    from llm_compression.evaluate.cost import linear_bits_per_weight

    bits = linear_bits_per_weight(q)["linear_bits_per_weight"]  # before any forward (the CPU kernel may repack)
    want = 4 + (8 / 32 + 32 / (32 * 256) if scheme == "nf4-dq" else 32 / 32)  # absmax per 32 weights
    assert bits == pytest.approx(want, rel=0.01)
    lin = [mod for mod in q.modules() if isinstance(mod, bnb.nn.Linear4bit)]
    assert len(lin) == 28 and not isinstance(q.lm_head, bnb.nn.Linear4bit)
    qs = lin[0].weight.quant_state
    assert qs.quant_type == scheme[:3] and qs.blocksize == 32 and (qs.state2 is not None) == (scheme == "nf4-dq")
    for a, b in zip(m.model.layers, q.model.layers):
        assert a.self_attn.q_proj.weight.shape == tuple(b.self_attn.q_proj.weight.quant_state.shape)
        assert a.mlp.down_proj.weight.shape == tuple(b.mlp.down_proj.weight.quant_state.shape)
        assert a.self_attn.num_key_value_groups == b.self_attn.num_key_value_groups
    w = dense_weight(q.model.layers[1].mlp.down_proj)
    assert (w[:, :7] == 0).all()
    rel = (w - m.model.layers[1].mlp.down_proj.weight).norm() / m.model.layers[1].mlp.down_proj.weight.norm()
    assert 0 < rel < 0.2  # really quantized, and close
    x = ids()
    with torch.no_grad():
        first = q(x).logits
        again = load_checkpoint(tmp_path / "q")[0](x).logits
        dense = m(x).logits
    assert torch.equal(first, again)
    assert (first - dense).abs().max() < 0.5 * dense.abs().max()
    with pytest.raises(Exception, match="already quantized"):
        quantize_checkpoint(tmp_path / "q", tmp_path / "qq", scheme="nf4")


def test_int8_of_per_layer_width_checkpoint_is_refused(tmp_path):
    from llm_compression.quantize import NonUniformWidthsError, quantize_checkpoint

    m = llama(8, 2)
    prune_structured(m, level="block", ratio=0.5, importance="l1")
    m.save_pretrained(tmp_path / "p")
    with pytest.raises(NonUniformWidthsError, match="'int8' cannot be built.*Valid for such checkpoints: nf4, nf4-dq, fp4"):
        quantize_checkpoint(tmp_path / "p", tmp_path / "q", scheme="int8")
    assert not (tmp_path / "q").exists()


# --- Gemma-3 -----------------------------------------------------------------------------------------

def gemma(layers=4):
    from transformers import Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, vocab_size=128, max_position_embeddings=64,
                           sliding_window=8, query_pre_attn_scalar=16)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_gemma3_block_level_works_and_reloads(tmp_path):
    m = gemma()
    assert m.config.model_type == "gemma3_text"
    r = prune_structured(m, level="block", ratio=0.5, importance="element1", calib_ids=ids())
    assert r["layer_shapes"][1]["num_attention_heads"] == 2 and r["layer_shapes"][1]["intermediate_size"] == 48
    x = ids()
    want = m(x).logits
    a = m.generate(x[:1, :4], max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    b = m.generate(x[:1, :4], max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(a, b)
    m.save_pretrained(tmp_path)
    m2, _ = load_pruned(tmp_path)
    assert torch.equal(m2(x).logits, want)


def test_gemma3_channel_level_refused_naming_the_reason():
    with pytest.raises(StructuredPruningError, match="Gemma-3 scales token embeddings by sqrt"):
        prune_structured(gemma(), level="channel", ratio=0.2, importance="l1")


# --- layer level (whole decoder blocks) ----------------------------------------------------------------

def _identity_layer(m, i):
    """Make decoder layer ``i`` an exact identity (zero o_proj and down_proj: both residual branches add 0)."""
    with torch.no_grad():
        m.model.layers[i].self_attn.o_proj.weight.zero_()
        m.model.layers[i].mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("imp", ["element1", "element2", "vector", "l1", "l2"])
@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_layer_level_removes_the_planted_identity_layer(imp):
    m = llama(8, 2, layers=6)
    _identity_layer(m, 3)
    x = ids()
    with torch.no_grad():
        want = m(x).logits
    r = prune_structured(m, level="layer", ratio=0.25, importance=imp, calib_ids=ids(4, 12, seed=3))
    assert r["layers_removed"] == [3]  # 0.25 of layers 1..4 = 1 layer; the identity scores lowest
    assert len(m.model.layers) == 5 and m.config.num_hidden_layers == 5
    assert [b.self_attn.layer_idx for b in m.model.layers] == list(range(5))
    assert r["plain_loadable"] and r["parameter_ratio"] > 0
    with torch.no_grad():
        assert torch.allclose(m(x).logits, want, atol=1e-5)  # removing an identity block changes nothing


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_layer_level_reloads_with_from_pretrained_and_generates(tmp_path):
    m = llama(8, 2, layers=6)
    r = prune_structured(m, level="layer", ratio=0.5, importance="random", seed=1, layer_range=[0, 6])
    assert len(r["layers_removed"]) == 3 and len(m.model.layers) == 3
    m.save_pretrained(tmp_path)
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = ids(1, 8)
    with torch.no_grad():
        assert torch.equal(m2(x).logits, m(x).logits)
        cached = m2.generate(x, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = m2.generate(x, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_layer_level_snaps_or_refuses_fractional_layer_counts():
    msgs = []
    m = llama(8, 2, layers=6)
    r = prune_structured(m, level="layer", ratio=0.3, importance="l2", log=msgs.append)  # 0.3 * 4 = 1.2 -> 1
    assert len(r["layers_removed"]) == 1 and any("snapped 1.2 of 4 decoder layers to 1" in s for s in msgs)
    with pytest.raises(StructuredPruningError, match="not a whole number"):
        prune_structured(llama(8, 2, layers=6), level="layer", ratio=0.3, importance="l2", snap=False)


def test_layer_level_on_gemma3_keeps_layer_types(tmp_path):
    m = gemma(layers=6)
    types = list(m.config.layer_types)
    r = prune_structured(m, level="layer", ratio=0.5, importance="l1")
    kept = [i for i in range(6) if i not in r["layers_removed"]]
    assert m.config.layer_types == [types[i] for i in kept]
    m.save_pretrained(tmp_path)
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = ids(1, 12)
    with torch.no_grad():
        assert torch.equal(m2(x).logits, m(x).logits)


def test_width_multiple_rounds_kept_mlp_channels_and_hidden_size():
    # block: 96 MLP channels at 0.3 -> 67 kept, rounded to a multiple of 32 -> 64; heads are not rounded
    msgs = []
    m = llama(8, 2, inter=96)
    r = prune_structured(m, level="block", ratio=0.3, importance="l2", layer_range=[0, 4], width_multiple=32,
                         log=msgs.append)
    assert [s["intermediate_size"] for s in r["layer_shapes"]] == [64] * 4
    assert any("a multiple of 32" in s and "width_multiple 32" in s for s in msgs)
    unrounded = prune_structured(llama(8, 2, inter=96), level="block", ratio=0.3, importance="l2", layer_range=[0, 4])
    assert [s["intermediate_size"] for s in unrounded["layer_shapes"]] == [67] * 4
    # channel: 72 hidden (9 heads) at 0.3 -> 50.4; multiple of lcm(9, 6) = 18 -> 54
    r = prune_structured(llama(9, 3, hidden=72), level="channel", ratio=0.3, importance="l2", width_multiple=6)
    assert r["hidden_size"] == 54 and r["hidden_size"] % 18 == 0
    r = prune_structured(llama(8, 2, hidden=128, inter=96), level="channel", ratio=0.3, importance="l2",
                         width_multiple=32)
    assert r["hidden_size"] == 96  # 128 * 0.7 = 89.6 -> nearest multiple of lcm(8, 32) = 32
    with pytest.raises(StructuredPruningError, match="width_multiple"):
        prune_structured(llama(), level="block", ratio=0.3, importance="l2", width_multiple=0)
