"""benchmarks/prune_flops.py: the arithmetic of each pruning pass, counted by hand on a small config."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CFG = {"hidden_size": 4, "intermediate_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
       "num_hidden_layers": 3}


def _bench():
    spec = importlib.util.spec_from_file_location("prune_flops", ROOT / "benchmarks" / "prune_flops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pass_counts_by_hand():
    b = _bench()
    shapes = b.block_shapes(CFG)  # head_dim 2: q 4x4, k/v 4x2, o 4x4, gate/up 4x8, down 8x4
    assert shapes["linears"]["k_proj"] == (4, 2)
    T, L = 10, 5
    # per token and block: all Linears 16+8+8+16+32+32+32 = 144; ours' statistics pass stops before down: 112;
    # attention 2 heads x 2 dims x (L+1) = 24
    ours = b.work("sparsegpt", "ours", shapes, T, L)
    ref = b.work("sparsegpt", "reference", shapes, T, L)
    assert ours["forward"] == 2 * T * (112 * 3 + 144 * 2)  # no output pass after the last block
    assert ref["forward"] == 2 * T * (144 * 3 + 144 * 3)
    assert ours["attention"] == 2 * T * 24 * 5 and ref["attention"] == 2 * T * 24 * 6
    # Hessians: ours one per distinct input (q/k/v 16, o 16, gate/up 16, down 64); the reference one per Linear
    assert ours["hessian"] == 2 * T * 3 * (16 + 16 + 16 + 64)
    assert ref["hessian"] == 2 * T * 3 * (3 * 16 + 16 + 2 * 16 + 64)
    # sweep: rows x cols^2 / 2 + cols^3 per Linear, per block
    per_block = sum(r * c * c // 2 + c ** 3 for c, r in shapes["linears"].values())
    assert ours["sweep"] == ref["sweep"] == 2 * 3 * per_block
    # ours' Hessians at real widths: upper column blocks only (576: blocks of 128; 1,536: blocks of 192)
    assert b.gram_upper_macs(576) == 128 * (576 + 448 + 320 + 192) + 64 * 64
    assert b.gram_upper_macs(1536) == 192 * 192 * sum(range(1, 9))
    assert b.gram_upper_macs(200) == 200 * 200  # below two blocks: one whole product
    wanda = b.work("wanda", "ours", shapes, T, L)
    assert wanda["hessian"] == wanda["sweep"] == 0 and wanda["forward"] == ours["forward"]


def test_table_with_measured_times(tmp_path, capsys):
    b = _bench()
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    measured = [{"method": "wanda", "compute_dtype": "float32", "prune_seconds": 2.0},
                {"method": "reference-wanda", "prune_seconds": 4.0}]
    (tmp_path / "prune.json").write_text(json.dumps(measured))
    out = tmp_path / "flops.json"
    assert b.main(["--checkpoint", str(tmp_path), "--samples", "2", "--seqlen", "8", "--batch-size", "1",
                   "--threads", "1", "--repeats", "1", "--measured", str(tmp_path / "prune.json"),
                   "--json", str(out)]) == 0
    rows = {(r["method"], r["implementation"], r["dtype"]): r for r in json.loads(out.read_text())["rows"]}
    assert rows[("wanda", "ours", "float32")]["measured_seconds"] == 2.0
    assert rows[("wanda", "reference", "float32")]["measured_seconds"] == 4.0
    assert rows[("sparsegpt", "ours", "float32")]["measured_seconds"] is None
    assert "floor ours / floor reference" in capsys.readouterr().out


def test_checkpoint_without_config_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        _bench().main(["--checkpoint", str(tmp_path)])
    with pytest.raises(ValueError, match="intermediate_size"):
        _bench().block_shapes({"hidden_size": 4, "num_attention_heads": 2, "num_hidden_layers": 1})
