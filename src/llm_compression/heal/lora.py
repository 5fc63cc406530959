"""LoRA adapters (via peft) on a pruned model, and a merge that keeps the pruning.

LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", Sec. 4.1): a frozen
weight ``W [out, in]`` gets a trainable update ``(alpha / r) * B @ A`` with ``A [r, in]``,
``B [out, r]``; ``B`` starts at 0 so training starts from the pruned model.

Merging adds ``(alpha / r) * B @ A`` densely, which would refill every pruned zero. :func:`merge_lora`
therefore re-applies the pruning mask after peft's merge (the masked-out part of the update is
dropped; its share of the update's Frobenius norm is reported) and checks that every masked weight
is exactly zero and that no shape changed.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modules import prunable_linears
from .train import apply_masks, masks_hold


def default_target_modules(model: nn.Module) -> list[str]:
    """Leaf names of every prunable Linear (all attention and MLP projections of the decoder blocks),
    e.g. ``["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]`` for Llama."""
    names: list[str] = []
    for full in prunable_linears(model):
        leaf = full.rsplit(".", 1)[-1]
        if leaf not in names:
            names.append(leaf)
    return names


def add_lora(model: nn.Module, *, rank: int = 8, alpha: float = 16.0, dropout: float = 0.05,
             target_modules: list[str] | None = None, seed: int = 0):
    """Wrap ``model`` with LoRA adapters on the prunable Linears whose leaf name is in ``target_modules``.

    Only decoder-block Linears are targeted (given by full name, so an LM head or embedding with a
    matching name is never touched). Each adapter takes the layer's own in/out widths, so per-layer
    widths left by structured pruning are fine. ``A`` is initialised from ``torch.manual_seed(seed)``.

    Returns:
        the ``peft.PeftModel``; only the adapter parameters require grad.

    Raises:
        ValueError: ``rank < 1``, ``dropout`` outside [0, 1), or a target name that matches no prunable Linear
            (the message lists the valid names).
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"LoRA rank {rank!r} must be >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout {dropout!r} must be in [0, 1)")
    valid = default_target_modules(model)
    targets = list(target_modules) if target_modules else valid
    unknown = [t for t in targets if t not in valid]
    if unknown:
        raise ValueError(f"LoRA target modules {unknown} match no prunable Linear; valid: {valid}")
    full_names = [n for n in prunable_linears(model) if n.rsplit(".", 1)[-1] in targets]
    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=full_names, bias="none",
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def mask_lora_updates(peft_model, masks: dict[str, torch.Tensor], adapter: str = "default") -> int:
    """Train LoRA *through* the pruning mask: each adapted layer computes ``x @ (W + (s B A) * keep)^T``,
    so the function trained is exactly the one the masked merge saves (no update is lost at the merge).

    ``keep`` is the complement of the layer's mask. The update is materialised per forward
    (``[out, in]``, r-times cheaper than the matmul) and LoRA dropout is not applied (the fused
    weight has no separate LoRA input). Costs one weight-sized gradient per layer in backward.

    Returns:
        the number of layers patched.

    Raises:
        ValueError: the adapter has dropout > 0 (set lora.dropout: 0 with masked training).
    """
    import types

    import torch.nn.functional as F
    from peft.tuners.lora import LoraLayer

    patched = 0
    for name, mod in peft_model.named_modules():
        if not (isinstance(mod, LoraLayer) and adapter in getattr(mod, "lora_A", {})):
            continue
        drop = mod.lora_dropout[adapter]
        if isinstance(drop, nn.Dropout) and drop.p > 0:
            raise ValueError(f"masked LoRA training needs lora dropout 0 (layer {name} has {drop.p})")
        key = name.removeprefix("base_model.model.")
        keep = ~masks[key] if key in masks else None

        def forward(self, x, *args, _keep=keep, **kwargs):
            base = self.base_layer
            dw = (self.lora_B[adapter].weight @ self.lora_A[adapter].weight) * self.scaling[adapter]
            if _keep is not None:
                dw = dw * _keep.to(dw.device, dw.dtype)
            return F.linear(x, base.weight + dw.to(base.weight.dtype), base.bias)

        mod.forward = types.MethodType(forward, mod)
        patched += 1
    return patched


@torch.no_grad()
def masked_update_share(peft_model, masks: dict[str, torch.Tensor], adapter: str = "default") -> float:
    """Share of the LoRA update that the pruning mask removes: ``||dW * M||_F / ||dW||_F`` over all
    adapted layers (``dW = (alpha/r) B @ A``). 0 when the update only touches kept weights."""
    from peft.tuners.lora import LoraLayer

    tot = dropped = 0.0
    for name, mod in peft_model.named_modules():
        if isinstance(mod, LoraLayer) and adapter in getattr(mod, "lora_A", {}):
            key = name.removeprefix("base_model.model.")
            dw = mod.get_delta_weight(adapter).float()
            tot += float((dw**2).sum())
            if key in masks:
                dropped += float((dw[masks[key].to(dw.device)] ** 2).sum())
    return (dropped / tot) ** 0.5 if tot > 0 else 0.0


@torch.no_grad()
def merge_lora(peft_model, masks: dict[str, torch.Tensor]) -> tuple[nn.Module, dict]:
    """Merge the adapters into the weights, then re-zero every masked weight.

    Args:
        peft_model: a ``PeftModel`` from :func:`add_lora` (after training).
        masks: from :func:`.train.capture_masks` on the model before LoRA was added.

    Returns:
        ``(model, info)``: the plain merged model, and ``masked_update_share``, ``refilled_zeros`` (zeros the
        dense merge had made non-zero and that were reset) and ``mask_holds``.

    Raises:
        RuntimeError: a masked weight is non-zero after re-masking, or a weight's shape changed.
    """
    share = masked_update_share(peft_model, masks)
    model = peft_model.merge_and_unload()
    refilled = apply_masks(model, masks)
    lin = prunable_linears(model)
    for name, m in masks.items():
        if tuple(lin[name].weight.shape) != tuple(m.shape):
            raise RuntimeError(f"layer {name} changed shape in the merge: {tuple(lin[name].weight.shape)} vs {tuple(m.shape)}")
    if not masks_hold(model, masks):
        raise RuntimeError("a pruned weight is non-zero after merging and re-masking")
    return model, {"masked_update_share": share, "refilled_zeros": refilled, "mask_holds": True}
