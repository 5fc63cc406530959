import json

import pytest
import torch

from llm_compression.evaluate.cost import count_parameters, disk_bytes
from llm_compression.models import load_checkpoint, read_compression, save_checkpoint
from llm_compression.modules import dense_weight, measure_sparsity, prunable_linears
from llm_compression.prune import prune_model
from llm_compression.quantize import AlreadyQuantizedError, quantize_checkpoint

from conftest import tiny_llama, tiny_tokenizer

IDS = torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def test_save_load_roundtrip_identical_logits_and_zeros(tmp_path):
    m = tiny_llama()
    prune_model(m, method="magnitude", ratio=0.5)
    save_checkpoint(m, tiny_tokenizer(), tmp_path / "ck", {"stage": "test", "x": 1})
    m2, tok = load_checkpoint(tmp_path / "ck")
    assert torch.equal(m(IDS).logits, m2(IDS).logits)
    assert measure_sparsity(m2)["zero_weights"] == measure_sparsity(m)["zero_weights"]
    assert read_compression(tmp_path / "ck")["x"] == 1
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left behind


def test_failed_save_leaves_previous_checkpoint(tmp_path):
    m = tiny_llama()
    save_checkpoint(m, tiny_tokenizer(), tmp_path / "ck", {"v": 1})

    class Boom:
        def save_pretrained(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(m, Boom(), tmp_path / "ck", {"v": 2})
    assert read_compression(tmp_path / "ck")["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_nf4_roundtrip_keeps_zeros_and_counts(tmp_path):
    m = tiny_llama()
    prune_model(m, method="magnitude", ratio=0.5)
    save_checkpoint(m, tiny_tokenizer(), tmp_path / "ck", {"stage": "test"})
    info = quantize_checkpoint(tmp_path / "ck", tmp_path / "q", scheme="nf4-dq")
    assert info["quantization"]["scheme"] == "nf4-dq"
    q, _ = load_checkpoint(tmp_path / "q")
    q2, _ = load_checkpoint(tmp_path / "q")
    assert type(q.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert torch.equal(q(IDS).logits, q2(IDS).logits)  # 4-bit save -> reload is exact
    zeros_fp = measure_sparsity(m)["zero_weights"]
    sp = measure_sparsity(q)
    assert sp["zero_weights"] >= zeros_fp  # pruned zeros stay exactly zero (NF4 has an exact 0 code)
    pruned = {n: (lin.weight == 0) for n, lin in prunable_linears(m).items()}
    for n, lin in prunable_linears(q).items():
        assert (dense_weight(lin)[pruned[n]] == 0).all()
    # logical parameter count is unchanged by 4-bit packing, the file shrinks
    assert count_parameters(q)["parameters"] == count_parameters(m)["parameters"]
    assert disk_bytes(tmp_path / "q") < disk_bytes(tmp_path / "ck")


def test_quantize_refuses_quantized_input(tmp_path, tiny_checkpoint):
    quantize_checkpoint(tiny_checkpoint, tmp_path / "q", scheme="nf4")
    with pytest.raises(AlreadyQuantizedError, match="already quantized"):
        quantize_checkpoint(tmp_path / "q", tmp_path / "qq", scheme="nf4-dq")
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        quantize_checkpoint(tiny_checkpoint, tmp_path / "q3", scheme="int3")
    assert not (tmp_path / "qq").exists() and not (tmp_path / "q3").exists()
