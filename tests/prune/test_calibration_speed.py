"""The calibration driver's shortcuts (issue 15): same fp32 result with less work, and the bfloat16
calibration compute dtype (recorded, refused as float16 on CPU)."""

import pytest
import torch

from llm_compression.modules import prunable_linears
from llm_compression.prune import calibration, prune_model
from llm_compression.prune.sparsegpt import SparseGPTPruner

from conftest import tiny_llama


def calib(seed=0, n=8, seqlen=32):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _weights(model):
    return {n: m.weight.detach().clone() for n, m in prunable_linears(model).items()}


@pytest.mark.parametrize("method,level", [("sparsegpt", "unstructured"), ("wanda", "4:8")])
def test_stopping_at_the_last_linear_changes_nothing(monkeypatch, method, level):
    """The statistics pass stops at the last Linear's input; with that shortcut off (every batch runs
    the whole block) the pruned weights are bit-identical."""
    fast, full = tiny_llama(seed=5), tiny_llama(seed=5)
    ids = calib(seed=5)
    prune_model(fast, method=method, level=level, ratio=0.5, calib_ids=ids, batch_size=4)
    monkeypatch.setattr(calibration._SharedInputs, "last_linear", lambda self: None)
    prune_model(full, method=method, level=level, ratio=0.5, calib_ids=ids, batch_size=4)
    for (n, a), b in zip(_weights(fast).items(), _weights(full).values()):
        assert torch.equal(a, b), n


def test_work_skipped_down_projection_and_last_block():
    """Counted forwards of ``mlp.down_proj`` (the last Linear of a Llama block): block 0 runs it on its
    first statistics batch only (where the order is learnt) and on both output batches; block 1 runs it
    never (order known, and the last block's outputs feed nothing)."""
    model = tiny_llama(seed=1)
    calls = {0: 0, 1: 0}
    for i, layer in enumerate(model.model.layers):
        layer.mlp.down_proj.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    prune_model(model, method="wanda", ratio=0.5, calib_ids=calib(n=8), batch_size=4)
    assert calls == {0: 1 + 2, 1: 0}


def test_sparsegpt_shares_one_factorization_per_input():
    """q/k/v (and gate/up) prune from one Cholesky factor of their common Hessian, computed once."""
    from llm_compression.prune import sparsegpt

    model = tiny_llama(seed=2)
    n = {"calls": 0}
    real = sparsegpt.inverse_hessian_factor

    def counting(*a, **k):
        n["calls"] += 1
        return real(*a, **k)

    sparsegpt.inverse_hessian_factor, saved = counting, real
    try:
        prune_model(model, method="sparsegpt", ratio=0.5, calib_ids=calib(), batch_size=4)
    finally:
        sparsegpt.inverse_hessian_factor = saved
    assert n["calls"] == 2 * 4  # per block: q/k/v, o, gate/up, down


def test_pruner_without_partners_still_prunes():
    lin = torch.nn.Linear(16, 8)
    p = SparseGPTPruner(lin, 0.5)
    p.add_batch(torch.randn(40, 16))
    mask = p.prune()
    assert mask.float().mean() == 0.5 and (lin.weight[mask] == 0).all() and p.H is None


def test_bfloat16_calibration_prunes_fp32_weights_and_records_dtype():
    model, ref = tiny_llama(seed=3), tiny_llama(seed=3)
    ids = calib(seed=3)
    r = prune_model(model, method="sparsegpt", ratio=0.5, calib_ids=ids, batch_size=4, compute_dtype="bfloat16")
    r32 = prune_model(ref, method="sparsegpt", ratio=0.5, calib_ids=ids, batch_size=4)
    assert r["compute_dtype"] == "bfloat16" and r.provenance()["compute_dtype"] == "bfloat16"
    assert r32["compute_dtype"] == "float32"
    assert all(m.weight.dtype == torch.float32 for m in prunable_linears(model).values())
    assert abs(r["sparsity_after"] - r32["sparsity_after"]) < 1e-6
    # the same weights chosen, up to bfloat16 activations: most masks agree, not all (else bf16 did nothing)
    agree = [((a == 0) == (b == 0)).float().mean().item() for a, b in zip(_weights(model).values(), _weights(ref).values())]
    assert min(agree) > 0.8 and min(agree) < 1.0
    wm, wm2 = tiny_llama(seed=3), tiny_llama(seed=3)
    w = prune_model(wm, method="wanda", ratio=0.5, calib_ids=ids, batch_size=4, compute_dtype="bfloat16")
    assert w["compute_dtype"] == "bfloat16"
    # a torch.dtype is taken as its name: the same masks, the same record
    w2 = prune_model(wm2, method="wanda", ratio=0.5, calib_ids=ids, batch_size=4, compute_dtype=torch.bfloat16)
    assert w2["compute_dtype"] == "bfloat16"
    assert all(torch.equal(a, b) for a, b in zip(_weights(wm).values(), _weights(wm2).values()))


def test_wanda_bf16_statistic_is_the_float64_sum_of_squares():
    from llm_compression.prune.wanda import WandaPruner

    x = (torch.randn(3, 50, 24, generator=torch.Generator().manual_seed(0)) * 40).bfloat16()
    p = WandaPruner(torch.nn.Linear(24, 4), 0.5)
    p.add_batch(x[:2])
    p.add_batch(x[2:])
    x64 = x.reshape(-1, 24).double()
    assert torch.allclose(p.sq_norm, (x64 * x64).sum(dim=0), rtol=1e-15, atol=0) and p.tokens == 150


def test_float16_on_cpu_and_bad_dtypes_are_refused_before_any_work():
    model = tiny_llama(seed=4)
    before = _weights(model)
    with pytest.raises(ValueError, match="float16' is refused on CPU.*bfloat16"):
        prune_model(model, method="wanda", ratio=0.5, calib_ids=calib(), compute_dtype="float16")
    with pytest.raises(ValueError, match="float16' is refused on CPU"):
        prune_model(model, method="wanda", ratio=0.5, calib_ids=calib(), compute_dtype=torch.float16)
    with pytest.raises(ValueError, match="'half' is not one of float32, bfloat16, float16"):
        prune_model(model, method="sparsegpt", ratio=0.5, calib_ids=calib(), compute_dtype="half")
    with pytest.raises(ValueError, match="only .* take a calibration compute dtype, not 'magnitude'"):
        prune_model(model, method="magnitude", ratio=0.5, compute_dtype="bfloat16")
    for (n, a), b in zip(before.items(), _weights(model).values()):
        assert torch.equal(a, b), n


def _plan_config(dtype):
    cal = {} if dtype == "unset" else {"dtype": dtype}
    return {"model": {"name": "tiny", "source": "embedded:smollm2-135m"},
            "grid": {"pruning": [{"method": m, "ratios": [0.5]} for m in ("wanda", "sparsegpt", "magnitude")]
                     + [{"method": "llm-pruner", "level": "channel", "ratios": [0.2], "importance": "l1"}]},
            "calibration": cal, "evaluation": {"perplexity": {"datasets": {"ptb": {}}}}}


@pytest.mark.parametrize("dtype", ["unset", None, "bfloat16"])
def test_calibration_dtype_in_prune_params_only_where_it_acts(dtype):
    """``calibration.dtype`` reaches the params (so the jobs rerun) of SparseGPT/Wanda only, and only
    when set; unset/null leaves every job's params as before."""
    from llm_compression.config import validate_config
    from llm_compression.planning import Plan

    plan = Plan(validate_config(_plan_config(dtype), check_model=False))
    params = {v.pruning.method: plan.prune_params(v.pruning.segment) for v in plan.variants if not v.pruning.is_dense}
    assert {"wanda", "sparsegpt", "magnitude"} <= set(params)
    for method, p in params.items():
        cal = p.get("calibration") or {}
        if dtype == "bfloat16" and method in ("wanda", "sparsegpt"):
            assert cal["dtype"] == "bfloat16", method
        else:
            assert "dtype" not in cal, method


def test_calibration_dtype_refused_by_the_schema():
    from llm_compression.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match="half"):
        validate_config(_plan_config("half"), check_model=False)


def test_calibration_dtype_of_a_compression_chain():
    from llm_compression.results import calibration_dtype_of

    pruned = {"stage": "prune", "calibration": {"samples": 4, "dtype": "bfloat16"}, "parent_compression": {"stage": "import"}}
    quantized = {"stage": "quantize", "parent_compression": {"stage": "heal", "parent_compression": pruned}}
    assert calibration_dtype_of(quantized) == "bfloat16"
    assert calibration_dtype_of({"stage": "prune", "calibration": {"samples": 4}}) is None
    assert calibration_dtype_of({}) is None


def test_evaluate_artifact_records_the_calibration_dtype_of_the_artifact(tmp_path):
    """The metrics record says in which dtype the artifact's pruning calibrated (read from its own
    compression.json by the library, not by the job script), and only when one was recorded."""
    from llm_compression.evaluate import evaluate_artifact
    from llm_compression.models import save_checkpoint
    from conftest import tiny_llama, tiny_tokenizer

    pruned = {"stage": "prune", "calibration": {"samples": 4, "dtype": "bfloat16"}, "parent_compression": {"stage": "import"}}
    for name, comp, want in (("bf16", {"stage": "quantize", "parent_compression": pruned}, "bfloat16"),
                             ("plain", {"stage": "prune", "calibration": {"samples": 4}}, None)):
        d = tmp_path / name
        save_checkpoint(tiny_llama(), tiny_tokenizer(), d, comp)
        rec = evaluate_artifact(d, "cost", seqlen=16)
        assert rec["protocol"].get("calibration_dtype") == want
    with pytest.raises(ValueError, match="evaluation kind 'ppl' is not one of perplexity, zeroshot, cost"):
        evaluate_artifact(d, "ppl")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_wanda_statistic_in_chunks_is_the_float64_sum_of_squares(monkeypatch, dtype):
    # batches longer than a chunk (uneven last chunk): the same sums as one float64 pass, and the
    # caller's activations untouched (a float64 input is squared on a copy, never in place)
    from llm_compression.prune import wanda

    monkeypatch.setattr(wanda, "NORM_CHUNK_VALUES", 24 * 7)
    x = (torch.randn(2, 45, 24, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    before = x.clone()
    p = wanda.WandaPruner(torch.nn.Linear(24, 4), 0.5)
    p.add_batch(x)
    assert torch.equal(x, before)
    x64 = x.reshape(-1, 24).double()
    torch.testing.assert_close(p.sq_norm, (x64 * x64).sum(dim=0), rtol=1e-14, atol=0)
    assert p.tokens == 90
