"""Forward-only structured criteria against hand-computed values: ShortGPT block influence, Gromov et al.
angular distance (layer level), Minitron activation importance (block and channel levels), contribution
importance (block level)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_structured import ids, llama

from llm_compression.prune.structured import StructuredPruningError, build_groups, prune_structured
from llm_compression.prune.structured.activations import (
    activation_group_importance,
    angular_distance,
    angular_distances,
    block_influence,
    cosine,
)


def _identity_layer(m, i):
    with torch.no_grad():
        m.model.layers[i].self_attn.o_proj.weight.zero_()
        m.model.layers[i].mlp.down_proj.weight.zero_()


def test_cosine_and_angular_distance_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [-3.0, 0.0], [0.0, 5.0]])
    assert torch.allclose(cosine(a, b), torch.tensor([1 / math.sqrt(2), -1.0, 1.0], dtype=torch.float64))
    # 45 degrees = 1/4 of pi, opposite = 1, same direction = 0
    assert torch.allclose(angular_distance(a, b), torch.tensor([0.25, 1.0, 0.0], dtype=torch.float64))


def test_block_influence_matches_hidden_states_by_hand():
    m = llama(8, 2, layers=4)
    x = ids(3, 10, seed=2)
    with torch.no_grad():
        hs = m(x, output_hidden_states=True).hidden_states  # [0..3] = inputs of layers 0..3; [4] after the norm
    bi = block_influence(m, x, batch_size=2)
    for i in range(3):
        want = 1 - F.cosine_similarity(hs[i].double(), hs[i + 1].double(), dim=-1).mean()
        assert abs(float(bi[i]) - float(want)) < 1e-6
    d = angular_distances(m, x, 2, batch_size=3)
    want = (torch.arccos(F.cosine_similarity(hs[1].double(), hs[3].double(), dim=-1).clamp(-1, 1)) / math.pi).mean()
    assert abs(float(d[1]) - float(want)) < 1e-6
    last = angular_distances(m, x, 2, token="last")
    want = (torch.arccos(F.cosine_similarity(hs[0][:, -1].double(), hs[2][:, -1].double(), dim=-1)) / math.pi).mean()
    assert abs(float(last[0]) - float(want)) < 1e-6


def test_block_influence_removes_the_identity_block_and_scores_it_zero():
    m = llama(8, 2, layers=6)
    _identity_layer(m, 2)
    r = prune_structured(m, level="layer", ratio=0.25, importance="block-influence", calib_ids=ids(4, 12, seed=3))
    assert r["layers_removed"] == [2]
    assert abs(r["groups"][0]["scores"]["2"]) < 1e-12
    assert r["calibration_budget"] == {"samples": 4, "seqlen": 12, "tokens": 48, "batch_size": 1,
                                       "passes": "forward only"}


def test_angular_removes_the_consecutive_identity_run():
    m = llama(8, 2, layers=6)
    _identity_layer(m, 3)
    _identity_layer(m, 4)
    x = ids(1, 8)
    with torch.no_grad():
        want = m(x).logits
    r = prune_structured(m, level="layer", ratio=0.5, importance="angular", calib_ids=ids(4, 12, seed=3))
    assert r["layers_removed"] == [3, 4]  # 0.5 of layers 1..4 = a run of 2; h_3 == h_5 exactly
    scores = r["groups"][0]["scores"]
    assert set(scores) == {"1", "2", "3"} and scores["3"] < 1e-6 and min(scores["1"], scores["2"]) > 1e-3
    with torch.no_grad():
        assert torch.allclose(m(x).logits, want, atol=1e-5)


def _attention_free_model():
    """One decoder layer with q = k = 0 (uniform causal attention) and o_proj = 0, so every activation has a
    closed form from the token embeddings."""
    m = llama(4, 2, head_dim=4, hidden=16, inter=8, layers=1, seed=4)
    with torch.no_grad():
        a = m.model.layers[0].self_attn
        a.q_proj.weight.zero_()
        a.k_proj.weight.zero_()
        a.o_proj.weight.zero_()
    return m


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_activation_importance_by_hand():
    m = _attention_free_model()
    blk = m.model.layers[0]
    eps = m.config.rms_norm_eps
    x = ids(3, 5, seed=9)
    with torch.no_grad():
        e = m.model.embed_tokens.weight[x].double()  # [3, 5, 16]
        ln1 = _rms(e, blk.input_layernorm.weight.double(), eps)
        v = (ln1 @ blk.self_attn.v_proj.weight.double().T).reshape(3, 5, 2, 4)  # 2 kv heads
        t = torch.arange(1, 6, dtype=torch.float64)[None, :, None, None]
        attn = v.cumsum(1) / t  # uniform causal attention: the running mean of the values
        attn = attn.repeat_interleave(2, dim=2)  # query heads 0,1 read kv head 0; 2,3 read kv head 1
        head_want = attn.norm(dim=-1).mean(1).pow(2).sum(0).sqrt()  # ||.||_2 per token, mean over t, L2 over x
        h_mid = e  # o_proj = 0
        ln2 = _rms(h_mid, blk.post_attention_layernorm.weight.double(), eps)
        g = ln2 @ blk.mlp.gate_proj.weight.double().T
        u = ln2 @ blk.mlp.up_proj.weight.double().T
        mid = F.silu(g) * u
        mlp_want = mid.abs().mean(1).pow(2).sum(0).sqrt()
        h_out = h_mid + mid @ blk.mlp.down_proj.weight.double().T
        ln3 = _rms(h_out, m.model.norm.weight.double(), eps)
        hid_want = (ln1.abs() + ln2.abs() + ln3.abs()).mean(1).pow(2).sum(0).sqrt()
    gs_block = build_groups(m, "block", layer_range=[0, 1])
    heads, mlp = activation_group_importance(gs_block, m, x, batch_size=2)
    assert torch.allclose(heads, head_want, rtol=1e-4, atol=1e-7)
    assert torch.allclose(mlp, mlp_want, rtol=1e-4, atol=1e-7)
    (hid,) = activation_group_importance(build_groups(m, "channel"), m, x, batch_size=3)
    assert torch.allclose(hid, hid_want, rtol=1e-4, atol=1e-7)
    (kv,) = activation_group_importance(build_groups(m, "block", layer_range=[0, 1], attention="kv_group")[:1], m, x)
    assert torch.allclose(kv, head_want.reshape(2, 2).sum(1), rtol=1e-4)


def test_contribution_importance_by_hand():
    """``contribution``: Minitron's aggregation of ||W_O[:, head] a_head|| and |m_i| ||W_down[:, i]||."""
    m = llama(4, 2, head_dim=4, hidden=16, inter=8, layers=1, seed=5)
    blk = m.model.layers[0]
    with torch.no_grad():  # q = k = 0: uniform causal attention, o_proj kept
        blk.self_attn.q_proj.weight.zero_()
        blk.self_attn.k_proj.weight.zero_()
    eps = m.config.rms_norm_eps
    x = ids(3, 5, seed=8)
    with torch.no_grad():
        e = m.model.embed_tokens.weight[x].double()
        ln1 = _rms(e, blk.input_layernorm.weight.double(), eps)
        v = (ln1 @ blk.self_attn.v_proj.weight.double().T).reshape(3, 5, 2, 4)
        attn = (v.cumsum(1) / torch.arange(1, 6, dtype=torch.float64)[None, :, None, None]).repeat_interleave(2, 2)
        w_o = blk.self_attn.o_proj.weight.double()  # [16, 4 heads * 4]
        per_head = torch.stack([attn[:, :, h] @ w_o[:, 4 * h:4 * h + 4].T for h in range(4)], 2)  # [3, 5, 4, 16]
        head_want = per_head.norm(dim=-1).mean(1).pow(2).sum(0).sqrt()
        h_mid = e + per_head.sum(2)
        ln2 = _rms(h_mid, blk.post_attention_layernorm.weight.double(), eps)
        mid = F.silu(ln2 @ blk.mlp.gate_proj.weight.double().T) * (ln2 @ blk.mlp.up_proj.weight.double().T)
        w_down = blk.mlp.down_proj.weight.double()  # [16, 8]
        per_channel = mid[..., None] * w_down.T  # [3, 5, 8, 16]: channel i's share of the MLP output
        mlp_want = per_channel.norm(dim=-1).mean(1).pow(2).sum(0).sqrt()
    gs = build_groups(m, "block", layer_range=[0, 1])
    heads, mlp = activation_group_importance(gs, m, x, batch_size=2, importance="contribution")
    assert torch.allclose(heads, head_want, rtol=1e-4, atol=1e-7)
    assert torch.allclose(mlp, mlp_want, rtol=1e-4, atol=1e-7)
    # not the activation ranking rescaled: the projection's column norms change the order
    act_heads, act_mlp = activation_group_importance(gs, m, x, importance="activation")
    assert not torch.allclose(mlp / mlp.sum(), act_mlp / act_mlp.sum(), rtol=1e-2)
    with pytest.raises(StructuredPruningError, match="hidden channels"):
        activation_group_importance(build_groups(m, "channel"), m, x, importance="contribution")


def test_activation_pruning_is_deterministic_and_records_its_budget():
    res = []
    for _ in range(2):
        m = llama(8, 2, layers=4)
        res.append(prune_structured(m, level="block", ratio=0.5, importance="activation", calib_ids=ids(4, 12)))
    assert res[0]["groups"] == res[1]["groups"]
    assert res[0]["calibration_budget"]["passes"] == "forward only"
    assert res[0]["calibration_budget"]["tokens"] == 48


@pytest.mark.parametrize("level,imp", [("block", "block-influence"), ("channel", "angular"),
                                       ("layer", "activation"), ("channel", "contribution"),
                                       ("layer", "contribution")])
def test_criteria_are_refused_at_levels_they_do_not_score(level, imp):
    m = llama(8, 2, layers=4)
    w = m.model.layers[1].mlp.up_proj.weight.clone()
    with pytest.raises(StructuredPruningError, match=f"does not apply to level '{level}'"):
        prune_structured(m, level=level, ratio=0.5, importance=imp, calib_ids=ids())
    assert torch.equal(m.model.layers[1].mlp.up_proj.weight, w)


@pytest.mark.parametrize("level,imp", [("layer", "block-influence"), ("layer", "angular"), ("block", "activation"),
                                       ("block", "contribution")])
def test_forward_criteria_need_calibration(level, imp):
    with pytest.raises(StructuredPruningError, match="needs calibration data"):
        prune_structured(llama(8, 2), level=level, ratio=0.5, importance=imp)
