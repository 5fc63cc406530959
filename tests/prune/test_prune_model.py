import pytest
import torch

from llm_compression.modules import measure_sparsity, prunable_linears
from llm_compression.prune import prune_model

from conftest import tiny_llama


def calib(n=4, seqlen=32, seed=0):
    return torch.randint(3, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def test_measured_sparsity_counts_only_prunable_linears(model):
    names = list(prunable_linears(model))
    assert len(names) == 2 * 7 and all(".layers." in n for n in names)
    lin = prunable_linears(model)[names[0]]
    with torch.no_grad():
        lin.weight[:, : lin.in_features // 2] = 0
    sp = measure_sparsity(model)
    assert sp["zero_weights"] == lin.weight.numel() // 2
    assert sp["prunable_weights"] == sum(m.weight.numel() for m in prunable_linears(model).values())


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_prune_model_reaches_ratio_and_repeat(method):
    m = tiny_llama()
    r1 = prune_model(m, method=method, ratio=0.5, calib_ids=calib())
    assert r1["sparsity_after"] == pytest.approx(0.5, abs=0.01)
    r2 = prune_model(m, method=method, ratio=0.5, calib_ids=calib(seed=1))
    assert r2["sparsity_after"] == pytest.approx(0.75, abs=0.01)  # 1 - (1 - 0.5)^2


def _block1_masks(model) -> dict[str, torch.Tensor]:
    return {n: (m.weight == 0).clone() for n, m in prunable_linears(model).items() if ".layers.1." in n}


class _Keep:
    """A pruner that leaves its layer as it is (so a block is passed through unpruned)."""

    def __init__(self, linear):
        pass

    def add_batch(self, inp, out=None):
        pass

    def prune(self):
        pass


def _prune_only_block1(m, ids):
    """Wanda on block 1 alone, fed by whatever block 0 currently computes."""
    from llm_compression.prune.calibration import sequential_prune
    from llm_compression.prune.wanda import WandaPruner

    sequential_prune(m, ids, lambda name, lin: WandaPruner(lin, 0.5) if ".layers.1." in name else _Keep(lin),
                     batch_size=8)


def test_wanda_sequential_uses_pruned_activations():
    """Block 1 of a sequentially pruned model sees the outputs of the *pruned* block 0: its masks equal
    those of a run where block 1 is pruned on pruned-block-0 outputs, and differ from those of a run fed
    unpruned block-0 outputs."""
    ids = calib()
    sequential = tiny_llama(seed=3)
    prune_model(sequential, method="wanda", ratio=0.5, calib_ids=ids)

    unpruned_inputs = tiny_llama(seed=3)  # block 0 stays dense while block 1 is pruned
    _prune_only_block1(unpruned_inputs, ids)

    pruned_inputs = tiny_llama(seed=3)  # block 0 pruned first (as in the sequential run), then block 1
    from llm_compression.prune.calibration import sequential_prune
    from llm_compression.prune.wanda import WandaPruner

    sequential_prune(pruned_inputs, ids, lambda name, lin: WandaPruner(lin, 0.5) if ".layers.0." in name else _Keep(lin),
                     batch_size=8)
    _prune_only_block1(pruned_inputs, ids)

    seq, dense_fed, pruned_fed = (_block1_masks(x) for x in (sequential, unpruned_inputs, pruned_inputs))
    assert seq.keys() == dense_fed.keys() == pruned_fed.keys() and len(seq) == 7
    assert all(torch.equal(seq[n], pruned_fed[n]) for n in seq)
    differing = [n for n in seq if not torch.equal(seq[n], dense_fed[n])]
    assert differing, "block-1 masks do not depend on whether block 0 was pruned"


def test_prune_model_errors(model):
    with pytest.raises(ValueError, match="unknown pruning method 'obs'"):
        prune_model(model, method="obs", ratio=0.5)
    with pytest.raises(ValueError, match="needs calibration"):
        prune_model(model, method="wanda", ratio=0.5)
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        prune_model(model, method="magnitude", ratio=1.5)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_non_finite_activations_are_named_not_blamed_on_damping(method):
    """NaN/inf calibration activations: the error says so and names the Linear; no advice to raise percdamp."""
    m = tiny_llama(seed=1)
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")  # -> inf/NaN inputs of down_proj
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj: .*(NaN|infinite|inf).*not finite") as e:
        prune_model(m, method=method, ratio=0.5, calib_ids=calib())
    assert "percdamp" not in str(e.value).split("no percdamp can help")[-1]
    assert "larger percdamp" not in str(e.value)


def test_sparsegpt_hessian_with_nan_says_so():
    from llm_compression.prune.sparsegpt import SparseGPTPruner, sparsegpt_prune_weight

    lin = torch.nn.Linear(8, 4)
    p = SparseGPTPruner(lin, 0.5)
    x = torch.randn(16, 8)
    x[3, 2] = float("nan")
    p.add_batch(x)
    with pytest.raises(ValueError, match=r"Hessian \[8x8\] has 15 NaN and 0 infinite entries: .*not finite"):
        p.prune()
    h = torch.eye(8)
    h[1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"has 0 NaN and 1 infinite entries"):
        sparsegpt_prune_weight(torch.randn(4, 8), h, 0.5)


@pytest.mark.parametrize("method,level", [("magnitude", "unstructured"), ("wanda", "2:4"), ("sparsegpt", "unstructured"),
                                          ("llmpruner-l2", "channel")])
def test_prune_model_docstring_lists_every_returned_key(method, level):
    import re

    doc = prune_model.__doc__.split("Returns:")[1].split("Raises:")[0]
    listed = set(re.findall(r"``(\w+)``", doc))
    r = prune_model(tiny_llama(), method=method, level=level, ratio=0.25, calib_ids=calib())
    assert set(r) <= listed, f"not in the docstring: {sorted(set(r) - listed)}"

