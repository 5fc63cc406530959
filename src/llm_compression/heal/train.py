"""The training loop shared by LoRA fine-tuning and knowledge distillation, with its guards.

Guards (the public study this project follows lost its healed models to fp16 overflow unnoticed):

- :func:`check_training_dtype` refuses fp16 training on CPU and names the valid choices;
- the loop stops with :class:`NonFiniteLossError` naming the step as soon as a loss is NaN/inf;
- :func:`capture_masks` / :func:`apply_masks` keep every pruned (exactly-zero) weight at zero.

Mixed precision: the weights stay in the dtype they were loaded in (fp32 for this project's
checkpoints, the "master" copy); ``bfloat16``/``float16`` run the forward under ``torch.autocast``.
fp16 (CUDA only) uses a gradient scaler.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from ..modules import prunable_linears
from ..options.dtypes import AUTO, check_compute_dtype, cpu_has_native_bf16, device_type



class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or inf; the message names the step (1-based) and the loss parts."""


def check_training_dtype(dtype: str, device: str | torch.device) -> None:
    """Refuse training dtypes that cannot work on ``device``, before any heavy work.

    Raises:
        ValueError: ``dtype`` not one of :data:`~llm_compression.options.dtypes.COMPUTE_DTYPES`, or ``float16`` on a CPU
            (:func:`llm_compression.options.dtypes.check_compute_dtype`).
    """
    check_compute_dtype(dtype, device, purpose="training")


def resolve_training_dtype(dtype: str, device: str | torch.device) -> tuple[str, str]:
    """The compute dtype a recipe's ``dtype`` means on ``device``, and why.

    ``auto`` becomes ``bfloat16`` on a CUDA device with bfloat16 support (``torch.cuda.is_bf16_supported``)
    or a CPU with bfloat16 instructions (:func:`llm_compression.options.dtypes.cpu_has_native_bf16`), and
    ``float32`` otherwise: emulated bfloat16 matmuls make a training step many times slower than float32.
    Any other name is returned unchanged.

    Returns:
        ``(dtype, reason)``; ``reason`` is ``"requested"`` for an explicit dtype.
    """
    if dtype != AUTO:
        return dtype, "requested"
    kind = device_type(device)
    if kind == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bfloat16", "auto: CUDA device supports bfloat16"
        return "float32", "auto: CUDA device without bfloat16 support"
    if kind == "cpu" and cpu_has_native_bf16():
        return "bfloat16", "auto: CPU has bfloat16 instructions (AVX512-BF16/AMX/ARM BF16)"
    return "float32", f"auto: {kind} has no native bfloat16 matmul (emulated bfloat16 is many times slower)"


# --- masks ------------------------------------------------------------------------------------

@torch.no_grad()
def capture_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> bool ``[out, in]`` (True = weight is exactly zero) for every prunable Linear.

    Every exact zero counts as pruned, whatever made it: healing never refills a zero. Names are
    those of :func:`llm_compression.modules.prunable_linears` (e.g. ``model.layers.3.mlp.up_proj``);
    shapes are taken from the modules as they are (per-layer widths of structured pruning included).
    """
    return {name: lin.weight == 0 for name, lin in prunable_linears(model).items()}


def _linears_by_name(model: nn.Module) -> dict[str, nn.Linear]:
    """Prunable Linears of ``model``, also when wrapped by peft (``base_model.model.`` prefix, ``.base_layer``)."""
    found = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        key = name
        for prefix in ("base_model.model.",):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.endswith(".base_layer"):
            key = key[: -len(".base_layer")]
        found[key] = mod
    return found


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Set masked weights back to exactly zero (in place); works on plain and peft-wrapped models.

    Returns:
        number of weights that were non-zero and have been zeroed.

    Raises:
        KeyError: a masked layer is missing from ``model``.
        ValueError: a mask's shape differs from its layer's weight (shapes must never change in healing).
    """
    linears = _linears_by_name(model)
    changed = 0
    for name, mask in masks.items():
        if name not in linears:
            raise KeyError(f"masked layer {name!r} not found in the model")
        w = linears[name].weight
        if tuple(w.shape) != tuple(mask.shape):
            raise ValueError(f"layer {name}: weight shape {tuple(w.shape)} != mask shape {tuple(mask.shape)}")
        m = mask.to(w.device)
        changed += int((w[m] != 0).sum())
        w.masked_fill_(m, 0.0)
    return changed


def masks_hold(model: nn.Module, masks: dict[str, torch.Tensor]) -> bool:
    """True when every masked weight of ``model`` is exactly zero."""
    linears = _linears_by_name(model)
    return all(bool((linears[n].weight[m.to(linears[n].weight.device)] == 0).all()) for n, m in masks.items())


# --- loop -------------------------------------------------------------------------------------

@dataclass
class TrainSettings:
    """Optimisation settings of one healing run (all are recipe keys, hence Snakemake params)."""

    learning_rate: float = 2e-4
    steps: int = 100
    weight_decay: float = 0.0
    warmup_steps: int = 10
    lr_schedule: str = "constant"  # constant | cosine (after warm-up)
    max_grad_norm: float | None = 1.0
    dtype: str = "float32"
    log_every: int = 10


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Multiplier of the base learning rate at 0-based ``step``: linear warm-up over ``warmup_steps``,
    then constant, or a cosine decay to 0 at the last step."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    if settings.lr_schedule == "cosine":
        span = max(1, settings.steps - settings.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - settings.warmup_steps) / span)))
    return 1.0


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, dict]"]


def train_loop(
    model: nn.Module,
    params: list[nn.Parameter],
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn,
    settings: TrainSettings,
    *,
    masks: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Optimise ``params`` of ``model`` with AdamW for ``settings.steps`` steps.

    Args:
        params: the trainable parameters (LoRA adapters, or every parameter of a full student).
        batches: yields ``(input_ids, labels)``, LongTensors ``[batch, seq]``; ``labels`` is -100 where
            no loss is taken (padding, or the prompt of an instruction example).
        loss_fn: ``(model, input_ids, labels) -> (scalar loss, {part name: float})``.
        masks: when given, pruned weights are reset to exactly zero after every optimizer step (needed
            when base weights train, e.g. full-student distillation; AdamW's weight decay and momentum
            would otherwise move them).

    Returns:
        :class:`TrainResult` with one history row per step: ``step``, ``loss`` (and the parts),
        ``lr``, ``tokens`` (cumulative, loss-bearing tokens), ``seconds``, ``tokens_per_second``.

    Raises:
        ValueError: see :func:`check_training_dtype`; no trainable parameters.
        NonFiniteLossError: a loss is NaN/inf (raised at that step, before the optimizer step).
        StopIteration: ``batches`` ran out before ``settings.steps``.
    """
    check_training_dtype(settings.dtype, device)
    if not params:
        raise ValueError("no trainable parameters")
    dev = torch.device(device)
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    amp_dtype = None if settings.dtype == "float32" else getattr(torch, settings.dtype)
    scaler = torch.amp.GradScaler("cuda") if settings.dtype == "float16" else None
    log = log or (lambda s: None)
    model.train()
    result = TrainResult()
    t0 = time.perf_counter()
    window_tokens, window_t = 0, t0
    for step in range(settings.steps):
        input_ids, labels = next(batches)
        input_ids, labels = input_ids.to(dev), labels.to(dev)
        for g in opt.param_groups:
            g["lr"] = settings.learning_rate * lr_factor(step, settings)
        ctx = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
        with ctx:
            loss, parts = loss_fn(model, input_ids, labels)
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at step {step + 1} of {settings.steps} "
                f"(parts: {parts}; dtype {settings.dtype}, lr {opt.param_groups[0]['lr']:.3g}); stopping, "
                "nothing is saved"
            )
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if masks is not None:
            apply_masks(model, masks)
        n_tok = int((labels[:, 1:] != -100).sum())
        result.tokens += n_tok
        window_tokens += n_tok
        now = time.perf_counter()
        row = {"step": step + 1, "loss": float(loss.detach()), **parts, "lr": opt.param_groups[0]["lr"],
               "tokens": result.tokens, "seconds": now - t0}
        result.history.append(row)
        if (step + 1) % settings.log_every == 0 or step == 0 or step + 1 == settings.steps:
            tps = window_tokens / max(now - window_t, 1e-9)
            row["tokens_per_second"] = tps
            extra = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
            log(f"step {step + 1}/{settings.steps} loss {row['loss']:.4f} {extra} lr {row['lr']:.3g} "
                f"tokens {result.tokens} {tps:.0f} tokens/s")
            window_tokens, window_t = 0, now
    model.eval()
    result.steps = settings.steps
    result.seconds = time.perf_counter() - t0
    return result


def write_loss_curve(history: list[dict], path) -> None:
    """Write the per-step history as CSV (one row per step; columns = union of the row keys)."""
    import csv
    import io

    from ..io import write_text_atomic

    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for row in history:
        w.writerow(row)
    write_text_atomic(path, buf.getvalue())


def cycle_batches(batches_fn: Callable[[int], Iterable]) -> Iterator:
    """Endless iterator over epochs: ``batches_fn(epoch)`` yields one epoch's batches."""
    epoch = 0
    while True:
        empty = True
        for b in batches_fn(epoch):
            empty = False
            yield b
        if empty:
            raise ValueError("the training data yields no batch (fewer examples than one batch?)")
        epoch += 1
