"""Unstructured and N:M pruning (magnitude, Wanda, SparseGPT) on tiny random models: masks against
brute force, N:M patterns, repeated pruning, exact zeros through save/load and NF4, grid expansion."""

import math

import pytest
import torch
from torch import nn

from llm_compression.modules import measure_sparsity, prunable_linears
from llm_compression.prune import prune_model
from llm_compression.prune.magnitude import prune_global_magnitude, prune_linear_magnitude
from llm_compression.prune.wanda import WandaPruner

METHODS = ["magnitude", "wanda", "sparsegpt"]


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=256)
    return LlamaForCausalLM(cfg).eval()


def calib(seed=0, n=8, seqlen=32):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def tiny_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(255)} | {"<unk>": 255}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


# --- masks against brute force ------------------------------------------------------------------

def _lowest_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Brute force: bool mask of the k smallest entries of a 1-D tensor (no ties in these tests)."""
    out = torch.zeros(values.numel(), dtype=torch.bool)
    order = sorted(range(values.numel()), key=lambda i: values[i].item())
    for i in order[:k]:
        out[i] = True
    return out


def test_wanda_mask_brute_force():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(12, 5, bias=False)
    lin.weight.data = torch.randn(5, 12, generator=g)
    W = lin.weight.detach().clone()
    X = torch.randn(3, 7, 12, generator=g) * torch.linspace(0.1, 3, 12)
    p = WandaPruner(lin, 0.4)
    p.add_batch(X[:2])
    p.add_batch(X[2:])
    mask = p.prune()
    norms = [math.sqrt(sum(X[b, t, j].item() ** 2 for b in range(3) for t in range(7))) for j in range(12)]
    for r in range(5):
        score = torch.tensor([abs(W[r, j].item()) * norms[j] for j in range(12)])
        assert torch.equal(mask[r], _lowest_k(score, math.floor(0.4 * 12)))
    assert torch.equal(lin.weight == 0, mask)


@pytest.mark.parametrize("scope", ["layer", "row"])
def test_magnitude_mask_brute_force(scope):
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(10, 6, bias=False)
    lin.weight.data = torch.randn(6, 10, generator=g)
    W = lin.weight.detach().clone()
    mask = prune_linear_magnitude(lin, 0.3, scope=scope)
    if scope == "layer":
        assert torch.equal(mask.flatten(), _lowest_k(W.abs().flatten(), math.floor(0.3 * 60)))
    else:
        for r in range(6):
            assert torch.equal(mask[r], _lowest_k(W[r].abs(), math.floor(0.3 * 10)))


def test_global_magnitude_brute_force_and_repeat():
    g = torch.Generator().manual_seed(2)
    lins = [nn.Linear(8, 4, bias=False), nn.Linear(16, 3, bias=False), nn.Linear(4, 8, bias=False)]
    for lin in lins:
        lin.weight.data = torch.randn(lin.weight.shape, generator=g) * (1 + len(lin.weight))
    allw = torch.cat([lin.weight.detach().abs().flatten() for lin in lins])
    expected = _lowest_k(allw, math.floor(0.5 * allw.numel()))
    prune_global_magnitude(lins, 0.5)
    got = torch.cat([(lin.weight == 0).flatten() for lin in lins])
    assert torch.equal(got, expected)
    layer_sparsity = [float((lin.weight == 0).float().mean()) for lin in lins]
    assert max(layer_sparsity) - min(layer_sparsity) > 0.1  # one threshold, unequal layers
    prune_global_magnitude(lins, 0.5)  # repeat: half of the remaining
    n_zero = sum(int((lin.weight == 0).sum()) for lin in lins)
    total = allw.numel()
    assert n_zero == total // 2 + (total - total // 2) // 2


def test_global_magnitude_exact_count_with_ties():
    lins = [nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)]
    for i, lin in enumerate(lins):  # values on a coarse grid: many ties at the threshold
        lin.weight.data = (torch.arange(64).reshape(8, 8) % 4 + 1).float() * (-1) ** i
    prune_global_magnitude(lins, 0.3)
    assert sum(int((lin.weight == 0).sum()) for lin in lins) == math.floor(0.3 * 128)
    assert all(lin.weight.abs().max() == 4 for lin in lins)


# --- N:M patterns -------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("level,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_pattern_every_group(method, level, n, m):
    model = tiny_llama()
    r = prune_model(model, method=method, level=level, calib_ids=calib())
    for name, lin in prunable_linears(model).items():
        zeros = (lin.weight == 0).reshape(lin.out_features, -1, m).sum(dim=2)
        assert (zeros >= n).all(), name
        assert (zeros == n).float().mean() > 0.99, name  # random weights: no accidental extra zeros
    assert r["sparsity_after"] == pytest.approx(n / m, abs=1e-3)


def test_nm_indivisible_width_is_a_clear_error():
    model = tiny_llama()
    lin = model.model.layers[0].mlp.down_proj  # in_features 128 divides by 8; 124 does not
    model.model.layers[0].mlp.down_proj = nn.Linear(lin.in_features - 4, lin.out_features, bias=False)
    for method in METHODS:
        with pytest.raises(ValueError, match="divisible by 8"):
            prune_model(model, method=method, level="4:8", calib_ids=calib())
    assert measure_sparsity(model)["zero_weights"] == 0  # raised before any weight changed


# --- repeated pruning ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_repeat_prunes_again(method):
    model = tiny_llama()
    r1 = prune_model(model, method=method, ratio=0.5, calib_ids=calib())
    r2 = prune_model(model, method=method, ratio=0.5, calib_ids=calib())
    assert r1["sparsity_after"] == pytest.approx(0.5, abs=0.01)
    assert r2["sparsity_before"] == pytest.approx(r1["sparsity_after"])
    assert r2["sparsity_after"] == pytest.approx(1 - (1 - 0.5) ** 2, abs=0.01)


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_sequential_sparsegpt_tiny_llama_gqa_reaches_target():
    model = tiny_llama(seed=3)
    ids = calib(seed=3, n=16)
    with torch.no_grad():
        dense_logits = model(ids[:2]).logits
    r = prune_model(model, method="sparsegpt", ratio=0.6, calib_ids=ids, batch_size=4, blocksize=32)
    assert r["sparsity_after"] == pytest.approx(0.6, abs=0.01)
    assert len(r["blocks"]) == 2
    for name, s in r["per_layer_sparsity"].items():
        assert s == pytest.approx(0.6, abs=0.02), name
    with torch.no_grad():
        logits = model(ids[:2]).logits
    assert torch.isfinite(logits).all() and not torch.equal(logits, dense_logits)


def test_bad_options_raise_before_pruning():
    model = tiny_llama()
    with pytest.raises(ValueError, match="does not take"):
        prune_model(model, method="wanda", ratio=0.5, calib_ids=calib(), blocksize=64)
    with pytest.raises(ValueError, match="global"):
        prune_model(model, method="magnitude", level="2:4", scope="global")
    with pytest.raises(ValueError, match="scope"):
        prune_model(model, method="magnitude", ratio=0.5, scope="column")
    assert measure_sparsity(model)["zero_weights"] == 0


# --- exact zeros survive save/load and NF4 ------------------------------------------------------

def test_zeros_survive_save_load_and_nf4(tmp_path):
    pytest.importorskip("bitsandbytes")
    from llm_compression.models import load_checkpoint, save_checkpoint
    from llm_compression.quantize import quantize_checkpoint

    model = tiny_llama()
    prune_model(model, method="wanda", ratio=0.5, calib_ids=calib())
    zeros = {n: (lin.weight == 0).clone() for n, lin in prunable_linears(model).items()}
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "pruned", {"stage": "prune"})
    reloaded, _ = load_checkpoint(tmp_path / "pruned")
    for n, lin in prunable_linears(reloaded).items():
        assert torch.equal(lin.weight == 0, zeros[n]), n
    quantize_checkpoint(tmp_path / "pruned", tmp_path / "nf4", scheme="nf4")
    q, _ = load_checkpoint(tmp_path / "nf4")
    from llm_compression.modules import dense_weight

    for n, lin in prunable_linears(q).items():
        w = dense_weight(lin)
        assert (w[zeros[n]] == 0).all(), n  # NF4 has an exact zero code
    assert measure_sparsity(q)["sparsity"] >= 0.5 - 1e-3


# --- grid: one-shot equivalents of repeats ------------------------------------------------------

def _cfg(entries):
    from llm_compression.config import validate_config

    return validate_config({
        "model": {"name": "m", "source": "embedded:smollm2-135m"},
        "grid": {"dense": False, "pruning": entries},
        "calibration": {"corpus": "lambada"},
        "evaluation": {"perplexity": {"datasets": {"ptb": {"split": "test"}}}},
    }, check_model=False)


def test_oneshot_equivalent_adds_cumulative_x1():
    from llm_compression.config import expand_grid, pruning_options

    cfg = _cfg([{"method": "sparsegpt", "ratios": [0.5, 0.3], "repeats": [1, 2, 3], "oneshot_equivalent": True,
                 "percdamp": 0.05}])
    segs = [v.pruning.segment for v in expand_grid(cfg)]
    assert segs == ["sparsegpt_unstructured_0.5_x1", "sparsegpt_unstructured_0.5_x2", "sparsegpt_unstructured_0.75_x1",
                    "sparsegpt_unstructured_0.5_x3", "sparsegpt_unstructured_0.875_x1",
                    "sparsegpt_unstructured_0.3_x1", "sparsegpt_unstructured_0.3_x2", "sparsegpt_unstructured_0.51_x1",
                    "sparsegpt_unstructured_0.3_x3", "sparsegpt_unstructured_0.657_x1"]
    p = expand_grid(cfg)[2].pruning
    assert pruning_options(cfg, p) == {"blocksize": 128, "percdamp": 0.05}
    cfg = _cfg([{"method": "wanda", "ratios": [0.5], "repeats": [1, 2]}])
    assert len(expand_grid(cfg)) == 2


@pytest.mark.parametrize("entry,match", [
    ({"method": "wanda", "blocksize": 64}, "does not take 'blocksize'"),
    ({"method": "magnitude", "level": "2:4", "scope": "global"}, "global"),
    ({"method": "sparsegpt", "level": "4:8", "blocksize": 20}, "multiple of M=8"),
    ({"method": "sparsegpt", "percdamp": 0}, "percdamp"),
])
def test_config_rejects_bad_entries(entry, match):
    from llm_compression.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        _cfg([entry])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kth_smallest_is_torch_kthvalue(dtype):
    # numpy's introselect on CPU float32/64 (bf16 keeps torch.kthvalue): the same value per row, also
    # with ties, -inf (already pruned) and a non-contiguous view
    from llm_compression.prune.masks import kth_smallest

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 50, (40, 300), generator=g).to(dtype)
    x[torch.rand(40, 300, generator=g) < 0.2] = float("-inf")
    for groups in (x, x[::2, 7:], x.t()[:30]):
        for k in (1, 2, groups.shape[1] // 2, groups.shape[1]):
            got = kth_smallest(groups, k)
            assert got.shape == (groups.shape[0], 1) and got.dtype == groups.dtype
            assert torch.equal(got, torch.kthvalue(groups, k, dim=1, keepdim=True).values)


@pytest.mark.parametrize("kth_groups", [32, 1], ids=["kthvalue-per-k", "sort"])
def test_lowest_k_mask_equals_stable_ranking_with_ties_and_pruned(monkeypatch, kth_groups):
    from llm_compression.prune import masks
    from llm_compression.prune.masks import lowest_k_mask

    monkeypatch.setattr(masks, "_KTH_GROUPS", kth_groups)  # 1: rows with different k take the sort path
    for trial in range(200):
        g = torch.Generator().manual_seed(trial)
        G, L = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 20, (1,), generator=g))
        x = torch.randint(0, 4, (G, L), generator=g).float()  # many ties
        x[torch.rand(G, L, generator=g) < 0.3] = float("-inf")  # already pruned
        k = torch.randint(0, L + 1, (G,), generator=g)
        if trial % 2:
            k[:] = k[0]  # the kthvalue path
        expected = torch.zeros(G, L, dtype=torch.bool)
        for r in range(G):
            order = sorted(range(L), key=lambda j: (x[r, j].item(), j))
            for j in order[: int(k[r])]:
                expected[r, j] = True
        assert torch.equal(lowest_k_mask(x, k), expected), (x, k)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_shared_input_statistics_give_identical_result(method):
    from llm_compression.prune import calibration

    a, b = tiny_llama(seed=4), tiny_llama(seed=4)
    prune_model(a, method=method, ratio=0.5, calib_ids=calib(seed=4), batch_size=4, share_inputs=True)
    prune_model(b, method=method, ratio=0.5, calib_ids=calib(seed=4), batch_size=4, share_inputs=False)
    for (n, la), lb in zip(prunable_linears(a).items(), prunable_linears(b).values()):
        assert torch.equal(la.weight, lb.weight), n
    # the grouping found: q/k/v read one tensor, gate/up another
    block = a.model.layers[0]
    class Recorder:
        def add_batch(self, x, y=None):
            pass

        def share_from(self, other):
            pass

    pr = {n: Recorder() for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    feeder = calibration._SharedInputs(pr, enabled=True)
    hs = [m.register_forward_pre_hook(feeder.hook(n)) for n, m in block.named_modules() if isinstance(m, nn.Linear)]
    hidden, args = calibration.capture_block_inputs(a, calib(seed=4)[:2], 2)
    feeder.start_batch(0)
    block(hidden[0], *args[0][0][0], **args[0][0][1])
    for h in hs:
        h.remove()
    assert feeder.leader_of == {"self_attn.k_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
                                "mlp.up_proj": "mlp.gate_proj"}


def _reference_wanda(model, ids, ratio, nm=None):
    """A hand-written copy of the arithmetic of the Wanda code (locuslab/wanda ``prune_wanda`` with its
    ``WrappedGPT.scaler_row``; llm-compressor 0.14's ``WandaPruningModifier`` uses the same): per block,
    the running mean over *samples* of the squared input norms in float32, metric ``|W| * sqrt(scaler)``,
    per row the first ``int(cols * ratio)`` of a stable sort (N:M: the N smallest of every M), then the
    pruned block's outputs feed the next block. Samples go through one at a time."""
    from llm_compression.modules import decoder_layers, is_linear
    from llm_compression.prune.calibration import capture_block_inputs

    hidden, call_args = capture_block_inputs(model, ids, 1)
    for i, block in enumerate(decoder_layers(model)):
        lins = {n: m for n, m in block.named_modules() if is_linear(m)}
        scaler = {n: torch.zeros(m.in_features) for n, m in lins.items()}
        count = dict.fromkeys(lins, 0)

        def hook(name):
            def f(mod, inp, out):
                x = inp[0].reshape(-1, inp[0].shape[-1]).t().float()
                scaler[name] *= count[name] / (count[name] + 1)
                count[name] += 1
                scaler[name] += torch.norm(x, p=2, dim=1) ** 2 / count[name]
            return f

        hs = [m.register_forward_hook(hook(n)) for n, m in lins.items()]
        for h, (a, k) in zip(hidden, call_args[i]):
            block(h, *a, **k)
        for h in hs:
            h.remove()
        for n, m in lins.items():
            metric = m.weight.abs() * torch.sqrt(scaler[n].reshape(1, -1))
            mask = torch.zeros_like(metric, dtype=torch.bool)
            if nm is None:
                idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * ratio)]
                mask.scatter_(1, idx, True)
            else:
                for c in range(0, metric.shape[1], nm[1]):
                    mask.scatter_(1, c + torch.topk(metric[:, c:c + nm[1]], nm[0], dim=1, largest=False)[1], True)
            m.weight.data[mask] = 0
        out = [block(h, *a, **k) for h, (a, k) in zip(hidden, call_args[i])]
        hidden = [o[0] if isinstance(o, (tuple, list)) else o for o in out]


@torch.no_grad()
@pytest.mark.parametrize("level,nm", [("unstructured", None), ("2:4", (2, 4)), ("4:8", (4, 8))])
def test_wanda_equals_the_reference_code_arithmetic(level, nm):
    """Same masks as the Wanda reference arithmetic on a whole tiny model (sequential, per-row groups, N:M)."""
    ours, ref = tiny_llama(seed=2), tiny_llama(seed=2)
    ids = calib(seed=4)
    prune_model(ours, method="wanda", level=level, ratio=0.5, calib_ids=ids, batch_size=8)
    _reference_wanda(ref, ids, 0.5, nm)
    for (name, a), b in zip(prunable_linears(ours).items(), prunable_linears(ref).values()):
        assert torch.equal(a.weight == 0, b.weight == 0), name


def _with_exact_zeros(model, fraction=0.02, seed=7):
    """Zero a random ``fraction`` of every prunable weight, as a Q4_1-dequantized checkpoint holds some."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in prunable_linears(model).values():
            lin.weight[torch.rand(lin.weight.shape, generator=g) < fraction] = 0
    return model


@torch.no_grad()
@pytest.mark.parametrize("level,nm", [("unstructured", None), ("2:4", (2, 4))])
def test_wanda_zeros_rank_is_the_reference_rule_on_a_model_with_exact_zeros(level, nm):
    """With exact zeros in the weights, zeros='rank' gives the reference code's masks on a whole model; the
    default zeros='keep' prunes half of the non-zero weights besides the zeros (so it prunes more)."""
    ids = calib(seed=4)
    ref = _with_exact_zeros(tiny_llama(seed=2))
    _reference_wanda(ref, ids, 0.5, nm)
    rank, keep = _with_exact_zeros(tiny_llama(seed=2)), _with_exact_zeros(tiny_llama(seed=2))
    prune_model(rank, method="wanda", level=level, ratio=0.5, calib_ids=ids, batch_size=8, zeros="rank")
    prune_model(keep, method="wanda", level=level, ratio=0.5, calib_ids=ids, batch_size=8)
    for (name, a), b in zip(prunable_linears(rank).items(), prunable_linears(ref).values()):
        assert torch.equal(a.weight == 0, b.weight == 0), name
    if nm is None:
        assert measure_sparsity(keep)["sparsity"] > measure_sparsity(rank)["sparsity"] + 0.005


@torch.no_grad()
def test_sparsegpt_zeros_rank_counts_the_zeros_inside_the_ratio():
    """Per 128-column block slice SparseGPT prunes floor(ratio * slice size) weights: with zeros='rank' that
    count includes the exact zeros already there (the reference's rule), with 'keep' it comes on top."""
    from llm_compression.prune.sparsegpt import SparseGPTPruner

    g = torch.Generator().manual_seed(0)
    counts = {}
    for zeros in ("rank", "keep"):
        lin = nn.Linear(256, 32, bias=False)
        lin.weight.data = torch.randn(32, 256, generator=torch.Generator().manual_seed(1))
        lin.weight.data[:, :16] = 0  # 16 zero columns in the first block slice
        p = SparseGPTPruner(lin, 0.5, zeros=zeros)
        p.add_batch(torch.randn(64, 256, generator=g))
        mask = p.prune()
        counts[zeros] = [int(mask[:, c:c + 128].sum()) for c in (0, 128)]
    assert counts["rank"] == [32 * 64, 32 * 64]
    assert counts["keep"] == [32 * 16 + (32 * 112) // 2, 32 * 64]
    with pytest.raises(ValueError, match="zeros 'drop' must be 'keep' or 'rank'"):
        SparseGPTPruner(nn.Linear(8, 8), 0.5, zeros="drop")


def test_zeros_rank_is_refused_with_repeats():
    from llm_compression.config import ConfigError, pruning_options, expand_grid

    entry = {"method": "wanda", "ratios": [0.5], "repeats": [1, 2], "zeros": "rank"}
    with pytest.raises(ConfigError, match=r"zeros 'rank' with repeats \[1, 2\]: .*prune nothing new"):
        _cfg([entry])
    cfg = _cfg([{**entry, "repeats": [1]}])
    assert pruning_options(cfg, expand_grid(cfg)[0].pruning) == {"zeros": "rank"}
    with pytest.raises(ConfigError, match="drop"):
        _cfg([{**entry, "repeats": [1], "zeros": "drop"}])
