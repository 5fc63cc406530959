"""Healing: masks kept through LoRA merge and full-student KD, KD loss, numerics guards, tiny end-to-end."""
import json
import math

import pytest
import torch

from llm_compression.heal import (
    DistillLoss,
    NonFiniteLossError,
    RecipeError,
    add_lora,
    capture_masks,
    check_training_dtype,
    heal_model,
    kd_loss,
    mask_lora_updates,
    merge_lora,
    normalize_recipe,
    save_healed,
)
from llm_compression.heal.data import alpaca_examples, batch_iter, load_alpaca_records, render_alpaca
from llm_compression.heal.train import TrainSettings, cycle_batches, train_loop
from llm_compression.modules import prunable_linears
from llm_compression.prune.masks import nm_mask, unstructured_mask


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a shared, loaded 2-core machine
    spin-wait and made these tests ~40x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_llama(seed=0, vocab=256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def prune_in_place(model, level):
    """50% unstructured (per row by |W|) or 2:4 on every prunable Linear; returns the masks."""
    with torch.no_grad():
        for lin in prunable_linears(model).values():
            s = lin.weight.abs()
            m = unstructured_mask(s, 0.5) if level == "unstructured" else nm_mask(s, 2, 4)
            lin.weight[m] = 0.0
    return capture_masks(model)


def randomize_lora_b(peft_model, scale=0.5):
    """Make the LoRA update non-zero (B starts at 0): the merge then adds a dense B@A to every weight."""
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, scale)


def has_nm(w, n=2, m=4):
    g = (w == 0).reshape(w.shape[0], -1, m).sum(-1)
    return bool((g >= n).all())


@pytest.mark.parametrize("level", ["unstructured", "2:4"])
def test_merge_keeps_pruned_zeros(level):
    model = tiny_llama()
    masks = prune_in_place(model, level)
    before = {n: lin.weight.detach().clone() for n, lin in prunable_linears(model).items()}
    peft_model = add_lora(model, rank=4, alpha=8, dropout=0.0)
    randomize_lora_b(peft_model)
    # the plain peft merge would fill the zeros: check the update really is dense on the masked weights
    from peft.tuners.lora import LoraLayer
    dense_hits = sum(int((m.get_delta_weight("default")[masks[n.removeprefix("base_model.model.")]] != 0).sum())
                     for n, m in peft_model.named_modules() if isinstance(m, LoraLayer))
    assert dense_hits > 0
    merged, info = merge_lora(peft_model, masks)
    assert info["refilled_zeros"] == dense_hits
    assert 0 < info["masked_update_share"] < 1
    lin = prunable_linears(merged)
    assert set(lin) == set(masks)
    for name, m in masks.items():
        w = lin[name].weight
        assert w.shape == m.shape
        assert bool((w[m] == 0).all()), name
        assert not torch.equal(w[~m], before[name][~m]), f"{name}: kept weights did not get the update"
        if level == "2:4":
            assert has_nm(w), name
    # exactly the original sparsity
    assert sum(int((l.weight == 0).sum()) for l in lin.values()) == sum(int(m.sum()) for m in masks.values())


def test_kd_loss_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 17) * 3
    for T in (0.5, 1.0, 2.0, 4.0):
        assert kd_loss(logits, logits.clone(), temperature=T).item() == pytest.approx(0.0, abs=1e-6)
    # and with a real model pair: the teacher is a copy of the student
    student = tiny_llama()
    teacher = tiny_llama()
    ids = torch.randint(0, 256, (2, 12))
    loss, parts = DistillLoss(teacher, temperature=2.0)(student, ids, ids.clone())
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_known_value_and_t2_scaling():
    # two-token vocabulary, one position: KL(p||q) in closed form
    t = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    s = torch.tensor([[0.0, 0.0]])  # q = (1/2, 1/2)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kd_loss(s, t, temperature=1.0).item() == pytest.approx(kl, rel=1e-6)
    # at T=2: p_T = softmax(t/2) = (1, sqrt 3)/(1+sqrt 3); times T^2 = 4
    a = 1 / (1 + math.sqrt(3))
    kl2 = a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5)
    assert kd_loss(s, t, temperature=2.0).item() == pytest.approx(4 * kl2, rel=1e-6)
    # positive and KL direction is teacher || student
    assert kd_loss(t, s, temperature=1.0).item() != pytest.approx(kl, rel=1e-3)


def test_kd_teacher_keeps_no_graph():
    student, teacher = tiny_llama(0), tiny_llama(1)
    ids = torch.randint(0, 256, (2, 12))
    loss, _ = DistillLoss(teacher, temperature=2.0, alpha=0.5)(student, ids, ids.clone())
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())


def _windows(n=16, L=16, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, L), generator=g)


def test_planted_nan_stops_training_naming_the_step():
    model = tiny_llama()
    for p in model.parameters():
        p.requires_grad_(True)
    calls = {"n": 0}

    def plant(mod, inp, out):
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 3 else out  # third forward -> step 3

    model.model.layers[1].mlp.register_forward_hook(plant)
    from llm_compression.heal.distill import lm_loss_fn
    batches = cycle_batches(batch_iter(_windows(), batch_size=2, seed=0, pad_id=0))
    with pytest.raises(NonFiniteLossError, match=r"nan at step 3 of 5"):
        train_loop(model, list(model.parameters()), batches, lm_loss_fn, TrainSettings(steps=5, learning_rate=1e-3))


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="float16.*refused on CPU"):
        check_training_dtype("float16", "cpu")
    check_training_dtype("bfloat16", "cpu")
    check_training_dtype("float32", "cpu")
    with pytest.raises(ValueError, match="not one of"):
        check_training_dtype("int8", "cpu")
    model = tiny_llama()
    with pytest.raises(ValueError, match="refused on CPU"):  # refused before any data is read
        heal_model(model, None, {"method": "lora", "dtype": "float16"}, device="cpu")


def test_recipe_validation():
    r = normalize_recipe({"method": "kd", "kd": {"trainable": "full"}})
    assert "lora" not in r and r["kd"]["temperature"] == 2.0 and r["steps"] == 100
    assert "kd" not in normalize_recipe({"method": "lora"})
    assert normalize_recipe({"method": "lora", "epochs": 1})["steps"] is None
    for bad, msg in [({"method": "qlora"}, "method"), ({"method": "lora", "rank": 4}, "unknown keys"),
                     ({"method": "lora", "steps": 10, "epochs": 1}, "exactly one"),
                     ({"method": "kd", "kd": {"alpha": 2}}, "kd.alpha"),
                     ({"method": "lora", "data": {"format": "alpaca"}}, "needs data.path")]:
        with pytest.raises(RecipeError, match=msg):
            normalize_recipe(bad)


class CharTok:
    """A byte-level stand-in tokenizer (ids 0..255, EOS 2) for tests without tokenizer files."""

    eos_token_id = 2
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False, return_attention_mask=False):
        return {"input_ids": [b for b in text.encode("utf-8")]}


def test_alpaca_template_and_response_only_loss(tmp_path):
    recs = [{"instruction": "Add", "input": "1 2", "output": "3"}, {"instruction": "Say hi", "output": "hi"}]
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs))
    loaded = load_alpaca_records(str(p))
    assert loaded == recs
    prompt, resp = render_alpaca(recs[0])
    assert "### Input:\n1 2" in prompt and prompt.endswith("### Response:\n") and resp == "3"
    assert "### Input" not in render_alpaca(recs[1])[0]
    ex = alpaca_examples(CharTok(), loaded, seqlen=1000, loss_on="response")
    ids, labels = ex[0]
    n_prompt = len(prompt.encode())
    assert (labels[:n_prompt] == -100).all() and labels[n_prompt:].tolist() == [ord("3"), 2]
    ex_full = alpaca_examples(CharTok(), loaded, seqlen=1000, loss_on="full")
    assert (ex_full[0][1] == ex_full[0][0]).all()
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(ValueError, match="instruction"):
        load_alpaca_records(str(bad))
    b = next(iter(batch_iter(ex, batch_size=2, seed=0, pad_id=0)(0)))
    assert b[0].shape == b[1].shape and (b[1] == -100).any()


@pytest.mark.parametrize("method,trainable", [("lora", "lora"), ("kd", "lora"), ("kd", "full")])
def test_tiny_end_to_end_heal(tmp_path, method, trainable):
    """Heal a 2:4-pruned tiny Llama on instruction data; the loss falls, zeros stay, the checkpoint reloads."""
    from transformers import AutoModelForCausalLM

    teacher = tiny_llama(0)
    model = tiny_llama(0)
    masks = prune_in_place(model, "2:4")
    recs = [{"instruction": f"Repeat {i % 4}", "input": "", "output": f"{i % 4} {i % 4} {i % 4}"} for i in range(32)]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(recs))
    recipe = {"method": method, "steps": 30, "batch_size": 4, "seqlen": 128, "learning_rate": 3e-3,
              "warmup_steps": 2, "log_every": 10, "lora": {"rank": 4},
              "data": {"format": "alpaca", "path": str(data), "loss_on": "full"}}
    if method == "kd":
        recipe["kd"] = {"trainable": trainable, "alpha": 0.5}
        recipe.pop("lora") if trainable == "full" else None
        if trainable == "full":
            recipe["learning_rate"] = 1e-3
    logs = []
    res = heal_model(model, CharTok(), recipe, teacher=teacher if method == "kd" else None, log=logs.append)
    assert any("tokens/s" in line for line in logs)
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    assert res.info["sparsity_after"] == res.info["sparsity_before"] == pytest.approx(0.5)
    for name, lin in prunable_linears(res.model).items():
        assert bool((lin.weight[masks[name]] == 0).all()) and has_nm(lin.weight)

    class Tok:  # save_pretrained stand-in
        def save_pretrained(self, d):
            pass

    out = tmp_path / "healed"
    save_healed(res, Tok(), out, {"stage": "heal", "healing": res.recipe})
    assert (out / "loss_curve.csv").read_text().splitlines()[0].startswith("step,loss")
    assert len((out / "loss_curve.csv").read_text().splitlines()) == 31
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, res.model(ids).logits, atol=1e-5)
    if trainable == "lora":
        # the adapter alone reloads onto the pruned parent; its merge re-masked equals the saved weights
        from peft import PeftModel

        parent = tiny_llama(0)
        prune_in_place(parent, "2:4")
        merged, _ = merge_lora(PeftModel.from_pretrained(parent, out / "adapter"), masks)
        for name, lin in prunable_linears(merged).items():
            assert torch.allclose(lin.weight, prunable_linears(reloaded)[name].weight, atol=1e-6)
    else:
        assert not (out / "adapter").exists()


@pytest.mark.parametrize("level", ["unstructured", "2:4"])
def test_masked_lora_trains_the_function_that_is_saved(level):
    """With lora.masked the adapted model computes exactly what the masked merge saves; plain LoRA does not."""
    from llm_compression.heal import mask_lora_updates

    ids = torch.randint(0, 256, (2, 10))
    outs = {}
    for masked in (False, True):
        model = tiny_llama()
        masks = prune_in_place(model, level)
        pm = add_lora(model, rank=4, alpha=8, dropout=0.0)
        randomize_lora_b(pm, 0.2)
        if masked:
            assert mask_lora_updates(pm, masks) == len(masks)
        with torch.no_grad():
            trained = pm(ids).logits.clone()
        merged, _ = merge_lora(pm, masks)
        with torch.no_grad():
            saved = merged(ids).logits
        outs[masked] = (trained - saved).abs().max().item()
        if masked:  # gradients reach the adapters through the masked update
            pm2 = add_lora(tiny_llama(), rank=4, alpha=8, dropout=0.0)
            randomize_lora_b(pm2, 0.2)
            mask_lora_updates(pm2, capture_masks(pm2.base_model.model))
            pm2(ids).logits.sum().backward()
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in pm2.named_parameters() if "lora_" in n)
    assert outs[True] < 1e-5
    assert outs[False] > 1e-3
    with pytest.raises(RecipeError, match="dropout 0"):
        normalize_recipe({"method": "lora", "lora": {"masked": True}})


def test_heal_keeps_per_layer_widths(tmp_path):
    """Structured pruning leaves per-layer MLP widths that differ from the config: healing must adapt each
    module as it is and change no shape."""
    from torch import nn

    model = tiny_llama()
    for layer, width in zip(model.model.layers, (96, 40)):
        mlp = layer.mlp
        mlp.gate_proj = nn.Linear(64, width, bias=False)
        mlp.up_proj = nn.Linear(64, width, bias=False)
        mlp.down_proj = nn.Linear(width, 64, bias=False)
    masks = prune_in_place(model, "unstructured")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    recs = [{"instruction": f"Echo {i}", "output": str(i)} for i in range(8)]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    for masked in (False, True):  # the second run heals the (already healed) model again, masked
        res = heal_model(model, CharTok(), {"method": "lora", "steps": 3, "batch_size": 2, "seqlen": 64, "warmup_steps": 0,
                                        "lora": {"rank": 2, "dropout": 0.0, "masked": masked},
                                        "data": {"format": "alpaca", "path": str(tmp_path / "d.json"), "loss_on": "full"}})
        assert {n: tuple(p.shape) for n, p in res.model.named_parameters()} == shapes
        for name, lin in prunable_linears(res.model).items():
            assert bool((lin.weight[masks[name]] == 0).all())


@pytest.mark.parametrize("native_bf16,expected", [(False, "float32"), (True, "bfloat16")])
def test_auto_dtype_is_resolved_and_recorded(tmp_path, monkeypatch, native_bf16, expected):
    """``dtype: auto`` trains in the dtype the device runs natively; the record names it and what was asked."""
    import llm_compression.heal.train as train

    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: native_bf16)
    seen = []
    real_autocast = torch.autocast
    monkeypatch.setattr(train.torch, "autocast", lambda *a, **k: seen.append(k.get("dtype")) or real_autocast(*a, **k))
    recs = [{"instruction": f"Echo {i}", "output": str(i)} for i in range(8)]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    res = heal_model(tiny_llama(), CharTok(), {"method": "lora", "steps": 2, "batch_size": 2, "seqlen": 64,
                                             "warmup_steps": 0, "dtype": "auto", "lora": {"rank": 2},
                                             "data": {"format": "alpaca", "path": str(tmp_path / "d.json"),
                                                      "loss_on": "full"}})
    assert res.info["dtype"] == res.recipe["dtype"] == expected
    assert res.info["dtype_requested"] == "auto" and res.info["dtype_reason"].startswith("auto: ")
    assert seen == ([torch.bfloat16] * 2 if native_bf16 else [])


@pytest.mark.parametrize("method", ["lora", "kd"])
def test_gradient_checkpointing_gives_the_same_healed_weights(tmp_path, method):
    """gradient_checkpointing recomputes activations in the backward pass: same losses and healed weights (LoRA
    dropout included: the random state is preserved); off, the recipe (hence the job's params) has no such key."""
    from llm_compression.heal import normalize_recipe

    recs = [{"instruction": f"Repeat {i % 4}", "input": "", "output": f"{i % 4} {i % 4}"} for i in range(16)]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(recs))
    recipe = {"method": method, "steps": 4, "batch_size": 2, "seqlen": 64, "learning_rate": 3e-3, "warmup_steps": 0,
              "lora": {"rank": 4, "dropout": 0.1}, "data": {"format": "alpaca", "path": str(data), "loss_on": "full"}}
    assert "gradient_checkpointing" not in normalize_recipe(recipe)
    out = []
    for on in (False, True):
        model = tiny_llama(0)
        logs = []
        res = heal_model(model, CharTok(), {**recipe, "gradient_checkpointing": on},
                         teacher=tiny_llama(1) if method == "kd" else None, log=logs.append)
        assert any("gradient checkpointing: on" in line for line in logs) == on
        assert not res.model.is_activation_checkpointing
        out.append(([h["loss"] for h in res.history], {k: v.clone() for k, v in res.model.state_dict().items()}))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    for k, v in out[0][1].items():
        assert torch.allclose(v, out[1][1][k], atol=1e-6), k
