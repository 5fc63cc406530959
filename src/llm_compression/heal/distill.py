"""Knowledge distillation from a teacher (by default the dense parent) into a pruned student.

Loss (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", Sec. 2): with
teacher logits ``z_t`` and student logits ``z_s`` at a target position and temperature ``T``,

    KD = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )
       = T^2 * sum_v p_t(v) * (log p_t(v) - log p_s(v)),

averaged over the loss-bearing positions (those whose next-token label is not -100). The ``T^2``
factor keeps the gradient scale of the soft targets independent of ``T``. Optionally mixed with the
next-token cross-entropy on the data: ``loss = alpha * KD + (1 - alpha) * LM`` (``alpha = 1``: pure
distillation).

The teacher runs on the fly under ``torch.no_grad()``: its logits for the batch are computed, used
and dropped; none of its activations are kept for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Temperature-scaled KL(teacher || student) per position, averaged, times ``T^2``.

    Args:
        student_logits, teacher_logits: ``[..., vocab]`` (same shape).
        temperature: ``T > 0``.
        mask: bool ``[...]``; positions where it is False are left out (default: all positions).

    Returns:
        scalar tensor (nats x T^2); 0 when the two distributions are equal.

    Raises:
        ValueError: shape mismatch (e.g. a different vocabulary) or ``temperature <= 0``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ "
            "(teacher and student need the same vocabulary)"
        )
    if not temperature > 0:
        raise ValueError(f"temperature {temperature!r} must be > 0")
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_pos = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # [...]
    if mask is not None:
        per_pos = per_pos[mask]
    if per_pos.numel() == 0:
        return student_logits.sum() * 0.0
    return per_pos.mean() * temperature**2


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: ``logits [B, L, V]`` at position i predict ``labels [B, L]`` at i+1;
    labels of -100 are ignored. Mean over the scored tokens (nats)."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def lm_loss_fn(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor):
    """Loss function for :func:`..train.train_loop`: plain causal LM fine-tuning."""
    loss = lm_loss(model(input_ids=input_ids).logits, labels)
    return loss, {}


class DistillLoss:
    """Loss function for :func:`..train.train_loop`: ``alpha * KD + (1 - alpha) * LM``.

    Args:
        teacher: a causal LM with the student's vocabulary; put in eval mode and never trained.
        temperature: ``T`` of :func:`kd_loss`.
        alpha: weight of the KD term in [0, 1].

    Raises:
        ValueError: ``alpha`` outside [0, 1] or ``temperature <= 0``.
    """

    def __init__(self, teacher: nn.Module, *, temperature: float = 2.0, alpha: float = 1.0):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"kd alpha {alpha!r} must be in [0, 1] (1 = pure distillation)")
        if not temperature > 0:
            raise ValueError(f"temperature {temperature!r} must be > 0")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha

    def __call__(self, model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor):
        with torch.no_grad():
            t_logits = self.teacher(input_ids=input_ids).logits[:, :-1]
        s_logits_full = model(input_ids=input_ids).logits
        mask = labels[:, 1:] != -100
        kd = kd_loss(s_logits_full[:, :-1], t_logits, temperature=self.temperature, mask=mask)
        del t_logits
        parts = {"kd_loss": float(kd.detach())}
        if self.alpha < 1.0:
            lm = lm_loss(s_logits_full, labels)
            parts["lm_loss"] = float(lm.detach())
            return self.alpha * kd + (1.0 - self.alpha) * lm, parts
        return kd, parts
