"""Block-level head pruning for every attention layout: multi-head (MHA, n_kv == n_q), grouped-query
(GQA) and multi-query (MQA, n_kv == 1); the Llama-2-7B parameter count on the meta device."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_structured import _RELOAD, SRC, ids, llama, tiny_tokenizer
from transformers import AutoModelForCausalLM, LlamaConfig

from llm_compression.prune.structured import StructuredPruningError, count_parameters, prune_structured


@pytest.mark.parametrize("ratio,heads", [(0.25, 6), (0.5, 4), (0.6, 3)])
def test_mha_block_prunes_whole_heads_with_their_kv(ratio, heads):
    m = llama(8, 8, hidden=64, head_dim=8, layers=4)
    msgs = []
    r = prune_structured(m, level="block", ratio=ratio, importance="l2", log=msgs.append)
    shapes = r["layer_shapes"]
    # default range [1, -1): layers 1 and 2 pruned, 0 and 3 intact
    assert [s["num_attention_heads"] for s in shapes] == [8, heads, heads, 8]
    assert [s["num_key_value_heads"] for s in shapes] == [8, heads, heads, 8]
    for i in (1, 2):
        a = m.model.layers[i].self_attn
        assert a.q_proj.weight.shape == (heads * 8, 64) and a.o_proj.weight.shape == (64, heads * 8)
        assert a.k_proj.weight.shape == (heads * 8, 64) and a.v_proj.weight.shape == (heads * 8, 64)
        assert a.num_key_value_groups == 1
    removed = 8 - heads
    for i in (1, 2):
        g = next(g for g in r["groups"] if g["kind"] == "attention_head" and g["layer"] == i)
        assert len(g["removed"]) == removed
        assert any(s.startswith(f"layer {i}: attention heads") and f"8 -> {heads}, removed {g['removed']}" in s
                   for s in msgs), msgs
    # 0.6 * 8 = 4.8 is no whole number: snapped to 5 and said so; 0.25 and 0.5 are exact, no snap claimed
    assert any("snapped 4.8 of 8 attention heads" in s for s in msgs) == (ratio == 0.6)
    assert not any("query heads per key/value head" in s for s in msgs)
    with pytest.raises(StructuredPruningError, match="not a whole number"):
        prune_structured(llama(8, 8), level="block", ratio=0.6, importance="l2", snap=False)


def test_mha_keeps_the_planted_heads_and_removes_the_dead_one():
    m = llama(8, 8, layers=4)
    with torch.no_grad():  # head 5 of layer 1 contributes nothing: its o_proj columns are zero
        m.model.layers[1].self_attn.o_proj.weight[:, 40:48] = 0
    r = prune_structured(m, level="block", ratio=0.125, importance="element1", calib_ids=ids(4, 12, seed=3),
                         attention="query_head", layer_range=[1, 2])
    g = next(g for g in r["groups"] if g["kind"] == "attention_head")
    assert g["removed"] == [5]


@pytest.mark.slow  # loads the saved folder in a fresh Python process
def test_mha_reload_fresh_process_and_cached_generation(tmp_path):
    x = ids(2, 10, seed=5)
    want, dirs = {}, []
    for ratio in (0.25, 0.5, 0.6):
        m = llama(8, 8, hidden=64, head_dim=8, layers=4)
        r = prune_structured(m, level="block", ratio=ratio, importance="element1", calib_ids=ids())
        assert not r["plain_loadable"]  # layers 0 and 3 keep 8 heads: per-layer widths
        prompt = ids(1, 5, seed=7)
        a = m.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        b = m.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
        assert a.shape == (1, 13) and torch.equal(a, b)
        d = tmp_path / f"mha_{ratio}"
        m.save_pretrained(d)
        tiny_tokenizer().save_pretrained(d)
        (d / "compression.json").write_text(json.dumps({"result": {"structured": {"plain_loadable": False}}}))
        with torch.no_grad():
            want[str(d)] = m(x).logits
        dirs.append(str(d))
    torch.save(x, tmp_path / "x.pt")
    proc = subprocess.run([sys.executable, "-c", _RELOAD, str(tmp_path / "x.pt"), *dirs],
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "x.pt.out")
    for d in dirs:
        assert torch.equal(got[d]["ours"], want[d]), d


def test_mqa_prunes_query_heads_only():
    m = llama(8, 1, layers=4)
    msgs = []
    r = prune_structured(m, level="block", ratio=0.25, importance="l1", log=msgs.append)
    assert [s["num_attention_heads"] for s in r["layer_shapes"]] == [8, 6, 6, 8]
    assert [s["num_key_value_heads"] for s in r["layer_shapes"]] == [1, 1, 1, 1]
    assert m.model.layers[1].self_attn.num_key_value_groups == 6
    assert any(s.startswith("layer 1: query heads") for s in msgs)
    prompt = ids(1, 5, seed=7)
    a = m.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    b = m.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(a, b)


def test_gqa_unchanged_query_heads_per_kv_head():
    m = llama(9, 3, hidden=72, layers=4)
    r = prune_structured(m, level="block", ratio=0.25, importance="l2")
    assert [s["num_attention_heads"] for s in r["layer_shapes"]] == [9, 6, 6, 9]
    assert [s["num_key_value_heads"] for s in r["layer_shapes"]] == [3, 3, 3, 3]
    assert {g["kind"] for g in r["groups"]} == {"query_head", "mlp_channel"}


def test_llama2_7b_shape_block_025_layers_4_to_29_parameter_count():
    """LLM-Pruner's example: Llama-2-7B, block 0.25 in layers [4, 30) -> 5,422,977,024 parameters.
    Built on the meta device (shapes only), pruned by the real code path (random importance: the count
    does not depend on which heads/channels go)."""
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    assert count_parameters(m) == 6_738_415_616
    r = prune_structured(m, level="block", ratio=0.25, importance="random", layer_range=[4, 30])
    assert r["parameters_after"] == 5_422_977_024
    shapes = r["layer_shapes"]
    assert shapes[4] == {"num_attention_heads": 24, "num_key_value_heads": 24, "head_dim": 128,
                         "intermediate_size": 8256}
    assert shapes[3]["num_attention_heads"] == shapes[30]["num_attention_heads"] == 32
