"""Healing after pruning: LoRA fine-tuning (:mod:`.lora`) and knowledge distillation (:mod:`.distill`).

A *recipe* (a dict, one per healing name in the config's ``healing:`` section) says what to train,
on what, and how; :func:`normalize_recipe` fills its defaults and checks it. :func:`heal_model` runs
it on a loaded pruned model and :func:`save_healed` writes the healed checkpoint: the merged model
(Hugging Face format + ``compression.json``), the adapter alone in ``adapter/`` (LoRA-trained
recipes), and the loss curve ``loss_curve.csv``.

Compression is preserved: every prunable weight that is exactly zero before healing is exactly zero
in the saved checkpoint (so an N:M pattern still holds), and no tensor changes shape.

Recipe keys (defaults in :data:`DEFAULTS`)::

    method: lora | kd
    learning_rate, steps (or epochs), batch_size, seqlen, seed, dtype (float32|bfloat16|float16|auto),
    weight_decay, warmup_steps, lr_schedule (constant|cosine), max_grad_norm, log_every
    lora: {rank, alpha, dropout, target_modules (null = all attention and MLP projections),
           masked (train the update through the pruning mask, so nothing is dropped at the merge;
           needs dropout 0; false = plain peft LoRA, masked only after the merge)}
    kd:   {teacher (base | checkpoint path), temperature, alpha (KD weight; 1 = no LM loss),
           trainable (lora | full)}
    data: {format (corpus|alpaca), corpus, split, path, max_tokens, dataset, loss_on (response|full),
           allow_evaluation_corpus (the workflow refuses to train on an evaluated corpus unless true)}
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..modules import measure_sparsity, prunable_linears
from ..options.healing import (  # noqa: F401  (one definition each, torch-free)
    BUILTIN_RECIPES,
    DEFAULTS,
    METHODS,
    TRAINABLE,
    RecipeError,
    normalize_recipe,
)
from .data import alpaca_examples, batch_iter, corpus_windows, load_alpaca_records
from .distill import DistillLoss, kd_loss, lm_loss, lm_loss_fn
from .lora import add_lora, default_target_modules, mask_lora_updates, merge_lora
from .train import (
    NonFiniteLossError,
    TrainSettings,
    apply_masks,
    capture_masks,
    check_training_dtype,
    resolve_training_dtype,
    cycle_batches,
    masks_hold,
    train_loop,
    write_loss_curve,
)

LOSS_CURVE_FILE = "loss_curve.csv"
ADAPTER_DIR = "adapter"


def trains_lora(recipe: dict) -> bool:
    """Whether the recipe trains LoRA adapters (rather than the full student)."""
    return recipe["method"] == "lora" or recipe["kd"]["trainable"] == "lora"


@dataclass
class HealResult:
    """What :func:`heal_model` returns; :func:`save_healed` writes it."""

    model: torch.nn.Module
    recipe: dict
    history: list[dict]
    info: dict
    adapter_state: dict | None = None
    adapter_config: object | None = None
    extra: dict = field(default_factory=dict)


def build_batches(tokenizer, recipe: dict):
    """``(epoch -> batches, n_batches_per_epoch, data protocol)`` for a normalized recipe."""
    d = recipe["data"]
    if d["format"] == "corpus":
        examples, proto = corpus_windows(tokenizer, d["corpus"], d["split"], seqlen=recipe["seqlen"], path=d["path"],
                                         max_tokens=d["max_tokens"])
        proto = {"format": "corpus", **proto, "loss_on": "full"}
    else:
        records = load_alpaca_records(d["path"] or d["dataset"], split=d["split"])
        examples = alpaca_examples(tokenizer, records, seqlen=recipe["seqlen"], loss_on=d["loss_on"])
        proto = {"format": "alpaca", "source": d["path"] or f"hub:{d['dataset']}", "records": len(records),
                 "examples": len(examples), "seqlen": recipe["seqlen"], "loss_on": d["loss_on"],
                 "template": "alpaca"}
    n_batches = len(examples) // recipe["batch_size"]
    if n_batches < 1:
        raise RecipeError(f"training data has {len(examples)} examples, fewer than batch_size {recipe['batch_size']}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return batch_iter(examples, batch_size=recipe["batch_size"], seed=recipe["seed"], pad_id=pad), n_batches, proto


def heal_model(model, tokenizer, recipe: dict, *, teacher=None, device: str = "cpu",
               log: Callable[[str], None] | None = None) -> HealResult:
    """Heal a pruned ``model`` (in place) with a recipe; the pruning mask and all shapes are kept.

    Args:
        model: a causal LM (Hugging Face), already on ``device``.
        tokenizer: its tokenizer (for the training data).
        recipe: see the module docstring; normalized here.
        teacher: the teacher model for ``method: kd`` (on ``device``), ignored otherwise.

    Returns:
        :class:`HealResult` (the merged model, history, info: budget, sparsity before/after, shapes, data).

    Raises:
        RecipeError: bad recipe; ``method: kd`` without a teacher.
        ValueError: fp16 on CPU (before any data is loaded).
        NonFiniteLossError: a NaN/inf loss; the message names the step.
        RuntimeError: a pruned weight is non-zero after healing or a shape changed (never expected).
    """
    recipe = normalize_recipe(recipe)
    requested_dtype = recipe["dtype"]
    recipe["dtype"], dtype_reason = resolve_training_dtype(requested_dtype, device)
    check_training_dtype(recipe["dtype"], device)
    if recipe["method"] == "kd" and teacher is None:
        raise RecipeError("healing method 'kd' needs a teacher model")
    log = log or (lambda s: None)
    batches_fn, n_batches, data_proto = build_batches(tokenizer, recipe)
    steps = recipe["steps"] if recipe["steps"] is not None else max(1, math.ceil(recipe["epochs"] * n_batches))
    masks = capture_masks(model)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    before = measure_sparsity(model)
    log(f"healing with {recipe['method']}: {steps} steps x {recipe['batch_size']} x {recipe['seqlen']} tokens, "
        f"{n_batches} batches per epoch; sparsity before {before['sparsity']:.4f}")

    peft_model = None
    if trains_lora(recipe):
        lo = recipe["lora"]
        for p in model.parameters():
            p.requires_grad_(False)
        peft_model = add_lora(model, rank=lo["rank"], alpha=lo["alpha"], dropout=lo["dropout"],
                              target_modules=lo["target_modules"], seed=recipe["seed"])
        if lo["masked"]:
            log(f"masked LoRA: {mask_lora_updates(peft_model, masks)} layers train through the pruning mask")
        train_model = peft_model
        params = [p for p in peft_model.parameters() if p.requires_grad]
        step_masks = None  # base weights are frozen; masks are re-applied after the merge
    else:
        train_model = model
        for p in model.parameters():
            p.requires_grad_(True)
        params = list(model.parameters())
        step_masks = masks  # full student: re-zero after every optimizer step
    n_trainable = sum(p.numel() for p in params)
    log(f"trainable parameters: {n_trainable} ({'LoRA adapters' if peft_model is not None else 'full student'})")
    if recipe["method"] == "kd":
        loss_fn = DistillLoss(teacher, temperature=recipe["kd"]["temperature"], alpha=recipe["kd"]["alpha"])
    else:
        loss_fn = lm_loss_fn
    settings = TrainSettings(learning_rate=recipe["learning_rate"], steps=steps, weight_decay=recipe["weight_decay"],
                             warmup_steps=recipe["warmup_steps"], lr_schedule=recipe["lr_schedule"],
                             max_grad_norm=recipe["max_grad_norm"], dtype=recipe["dtype"], log_every=recipe["log_every"])
    if recipe.get("gradient_checkpointing"):
        # recompute each layer's activations in the backward pass (memory: one layer's, not all of them)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        log("gradient checkpointing: on")
    torch.manual_seed(recipe["seed"])
    res = train_loop(train_model, params, cycle_batches(batches_fn), loss_fn, settings, masks=step_masks,
                     device=device, log=log)
    if recipe.get("gradient_checkpointing"):
        model.activation_checkpointing_disable()

    merge_info = {}
    adapter_state = adapter_config = None
    if peft_model is not None:
        from peft import get_peft_model_state_dict

        adapter_state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
        adapter_config = peft_model.peft_config["default"]
        model, merge_info = merge_lora(peft_model, masks)
    else:
        merge_info = {"refilled_zeros": apply_masks(model, masks)}
        for p in model.parameters():
            p.requires_grad_(False)
    if not masks_hold(model, masks):
        raise RuntimeError("a pruned weight is non-zero after healing")
    changed = {n: (shapes[n], tuple(p.shape)) for n, p in model.named_parameters() if shapes.get(n) != tuple(p.shape)}
    if changed:
        raise RuntimeError(f"healing changed parameter shapes: {changed}")
    after = measure_sparsity(model)
    model.eval()
    info = {
        "steps": res.steps,
        "dtype": recipe["dtype"],
        "dtype_requested": requested_dtype,
        "dtype_reason": dtype_reason,
        "epochs_equivalent": res.steps / n_batches,
        "tokens": res.tokens,
        "train_seconds": res.seconds,
        "tokens_per_second": res.tokens / max(res.seconds, 1e-9),
        "trainable_parameters": n_trainable,
        "final_loss": res.history[-1]["loss"] if res.history else None,
        "first_loss": res.history[0]["loss"] if res.history else None,
        "sparsity_before": before["sparsity"],
        "sparsity_after": after["sparsity"],
        "zero_weights_before": before["zero_weights"],
        "zero_weights_after": after["zero_weights"],
        "prunable_weights": after["prunable_weights"],
        "masked_weights_kept_zero": int(sum(int(m.sum()) for m in masks.values())),
        "shapes_unchanged": True,
        "data": data_proto,
        **merge_info,
    }
    log(f"healed in {res.seconds:.1f}s: loss {info['first_loss']:.4f} -> {info['final_loss']:.4f}, "
        f"{res.tokens} tokens; sparsity {before['sparsity']:.4f} -> {after['sparsity']:.4f}")
    return HealResult(model, recipe, res.history, info, adapter_state, adapter_config)


def save_healed(result: HealResult, tokenizer, out_dir: str | os.PathLike, compression: dict) -> None:
    """Write the healed checkpoint atomically: model + tokenizer + ``compression.json`` (via
    :func:`llm_compression.models.save_checkpoint`), ``adapter/`` (peft format: ``adapter_config.json``,
    ``adapter_model.safetensors``; loads with ``peft.PeftModel.from_pretrained(pruned_parent, out_dir/adapter)``;
    its merge is *not* re-masked, so use the merged checkpoint for the compressed model) and the loss
    curve ``loss_curve.csv`` (one row per step)."""
    from safetensors.torch import save_file

    from ..io import atomic_dir
    from ..models import save_checkpoint

    with atomic_dir(out_dir) as tmp:
        save_checkpoint(result.model, tokenizer, tmp, compression)
        if result.adapter_state is not None:
            ad = Path(tmp) / ADAPTER_DIR
            ad.mkdir()
            result.adapter_config.save_pretrained(str(ad))
            save_file(result.adapter_state, str(ad / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_loss_curve(result.history, Path(tmp) / LOSS_CURVE_FILE)


__all__ = [
    "ADAPTER_DIR", "BUILTIN_RECIPES", "DEFAULTS", "DistillLoss", "HealResult", "LOSS_CURVE_FILE", "METHODS",
    "NonFiniteLossError", "RecipeError", "add_lora", "apply_masks", "capture_masks", "check_training_dtype",
    "resolve_training_dtype",
    "default_target_modules", "heal_model", "kd_loss", "lm_loss", "mask_lora_updates", "merge_lora", "normalize_recipe", "save_healed",
    "trains_lora",
]
