"""Choosing the groups to remove and physically shrinking the model.

:func:`select` turns a ratio and group scores into the indices to keep (whole heads only);
:func:`shrink` cuts every member tensor and rewrites the module attributes and the config fields
that transformers reads (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``,
``intermediate_size``, ``hidden_size``), so that forward and cached generation work on the
smaller tensors. Where the decoder layers end with different widths (block pruning outside the
first/last layers), the per-layer shapes go to ``config.pruned_layer_shapes`` and the checkpoint
reloads with :func:`llm_compression.checkpoint.load_pruned`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ...options.pruning import LAYER_SHAPES_KEY  # noqa: F401  (config key of per-layer widths; one definition)
from ...modules import decoder_layers
from .groups import GroupSet, StructuredPruningError, attention_shape


def snap_count(x: float, n: int, *, what: str, snap: bool, log: Callable[[str], None] | None,
               min_keep: int = 1, where: str = "") -> int:
    """Whole number of units to remove for a fractional request ``x`` out of ``n``.

    Rounds to the nearest integer, a tie going to the smaller count (prune less), and keeps at least
    ``min_keep`` units.

    Raises:
        StructuredPruningError: ``snap`` is False and ``x`` is not a whole number (within 1e-9).
    """
    k = math.floor(x + 0.5 - 1e-9)
    if abs(x - round(x)) > 1e-9:
        if not snap:
            raise StructuredPruningError(
                f"pruning {x / n:.4g} of {n} {what}{where} asks for {x:.4g}, not a whole number; "
                f"set snap: true to round to {k}, or choose a ratio that is a multiple of 1/{n}"
            )
        if log:
            log(f"snapped {x:.4g} of {n} {what} to {k} (ratio {x / n:.4g} -> {k / n:.4g})")
    k = max(0, min(k, n - min_keep))
    return k


def select(gs: GroupSet, scores: torch.Tensor, ratio: float, *, snap: bool = True,
           log: Callable[[str], None] | None = None) -> torch.Tensor:
    """Sorted LongTensor of the group indices to KEEP (the lowest-scored groups are removed).

    Query heads are removed in equal numbers inside each key/value group (``gs.partition``).
    At least one head per key/value group and one channel are kept.

    Raises:
        StructuredPruningError: see :func:`snap_count`.
    """
    if not 0.0 <= ratio < 1.0:
        raise StructuredPruningError(f"ratio {ratio!r} is outside [0, 1)")
    where = f"layer {gs.layer}" if gs.layer is not None else "model"
    if gs.partition:
        rep = len(gs.partition[0])
        k = snap_count(ratio * rep, rep, what="query heads per key/value head", snap=snap, log=log,
                       where=f" ({where})")
        keep = []
        for part in gs.partition:
            idx = torch.tensor(part)
            order = torch.argsort(scores[idx], stable=True)
            keep.extend(idx[order[k:]].tolist())
        return torch.tensor(sorted(keep), dtype=torch.long)
    unit = {"kv_group": "key/value groups", "attention_head": "attention heads (q/k/v/o)",
            "mlp_channel": "MLP channels", "hidden_channel": "hidden channels"}.get(gs.kind, gs.kind)
    whole = gs.kind in ("kv_group", "attention_head")
    k = snap_count(ratio * gs.n_groups, gs.n_groups, what=unit, where=f" ({where})",
                   snap=snap or gs.kind.endswith("channel"), log=log if whole else None)
    multiple = int(gs.meta.get("keep_multiple", 1))
    if multiple > 1 and k > 0:
        keep_n = gs.n_groups - k
        snapped = max(multiple, multiple * math.floor(keep_n / multiple + 0.5))
        if snapped != keep_n and log:
            log(f"kept {unit} rounded from {keep_n} to {snapped}, a multiple of {multiple} "
                f"({gs.meta.get('keep_multiple_reason', '')})")
        k = gs.n_groups - min(snapped, gs.n_groups)
    order = torch.argsort(scores, stable=True)
    return torch.sort(order[k:]).values.long()


def _owner(model, pname: str):
    mod_name, _, attr = pname.rpartition(".")
    return model.get_submodule(mod_name), attr


@torch.no_grad()
def shrink(model, groupsets: list[GroupSet], keeps: list[torch.Tensor]) -> None:
    """Cut every member tensor of every group set down to the kept groups, then fix metadata.

    Tied input/output embeddings stay tied (the shared tensor is cut once).
    """
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    for gs, keep in zip(groupsets, keeps):
        if keep.numel() == gs.n_groups:
            continue
        for m in gs.members:
            mod, attr = _owner(model, m.name)
            p = getattr(mod, attr)
            idx = (keep[:, None] * m.block + torch.arange(m.block)[None, :]).flatten().to(p.device)
            setattr(mod, attr, nn.Parameter(p.data.index_select(m.dim, idx).contiguous(),
                                            requires_grad=p.requires_grad))
    if tied:
        head.weight = emb.weight
    sync_metadata(model)


def layer_shapes(model) -> list[dict]:
    """Per decoder layer: ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size``,
    read from the tensors."""
    out = []
    for blk in decoder_layers(model):
        s = attention_shape(blk.self_attn)
        out.append({"num_attention_heads": s["n_q"], "num_key_value_heads": s["n_kv"], "head_dim": s["head_dim"],
                    "intermediate_size": blk.mlp.gate_proj.out_features})
    return out


def sync_metadata(model) -> None:
    """Make module attributes and ``model.config`` agree with the tensors.

    Module level: Linear ``in_features``/``out_features``, Embedding ``embedding_dim``, attention
    ``num_key_value_groups`` (transformers' eager/SDPA attention repeat key/value heads by it), MLP
    ``intermediate_size``/``hidden_size``, decoder-layer ``hidden_size``.
    Config level: ``hidden_size``, explicit ``head_dim``, and either uniform ``num_attention_heads``,
    ``num_key_value_heads``, ``intermediate_size`` (plain ``from_pretrained`` reloads), or -- when the
    layers differ, or the config class rejects the uniform numbers (LlamaConfig needs ``hidden_size %
    num_attention_heads == 0``) -- the previous, valid global numbers plus ``config.pruned_layer_shapes``
    with every layer's widths (:func:`llm_compression.checkpoint.load_pruned` reloads).

    Raises:
        StructuredPruningError: the config class rejects the new hidden size.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = m.weight.shape
    hidden = model.get_input_embeddings().weight.shape[1]
    shapes = layer_shapes(model)
    for blk, s in zip(decoder_layers(model), shapes):
        attn = blk.self_attn
        if s["num_attention_heads"] % s["num_key_value_heads"]:
            raise StructuredPruningError(
                f"{s['num_attention_heads']} query heads cannot share {s['num_key_value_heads']} key/value heads")
        attn.num_key_value_groups = s["num_attention_heads"] // s["num_key_value_heads"]
        for a in ("num_heads", "num_attention_heads"):
            if hasattr(attn, a):
                setattr(attn, a, s["num_attention_heads"])
        if hasattr(attn, "num_key_value_heads"):
            attn.num_key_value_heads = s["num_key_value_heads"]
        blk.mlp.intermediate_size = s["intermediate_size"]
        for obj in (blk, blk.mlp, attn):
            if hasattr(obj, "hidden_size"):
                obj.hidden_size = hidden
    cfg = model.config
    keys = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
    uniform = all(s == shapes[0] for s in shapes)
    updates = {"hidden_size": hidden, "head_dim": shapes[0]["head_dim"]}
    if uniform:
        updates.update({k: shapes[0][k] for k in keys})
    if uniform and config_validates(cfg, updates):
        for k, v in updates.items():
            setattr(cfg, k, v)
        if hasattr(cfg, LAYER_SHAPES_KEY):
            delattr(cfg, LAYER_SHAPES_KEY)
        return
    # Per-layer widths (or uniform widths the config class rejects, e.g. Llama's check
    # hidden_size % num_attention_heads == 0): keep the config's valid global head/MLP numbers and
    # list the true widths of every layer; load_pruned rebuilds the layers from them.
    updates = {k: v for k, v in updates.items() if k == "hidden_size" or k == "head_dim"}
    if not config_validates(cfg, updates):
        raise StructuredPruningError(
            f"{type(cfg).__name__} rejects hidden_size={hidden} with num_attention_heads="
            f"{getattr(cfg, 'num_attention_heads', '?')}; prune the hidden dimension to a multiple of the head count")
    for k, v in updates.items():
        setattr(cfg, k, v)
    setattr(cfg, LAYER_SHAPES_KEY, [{k: s[k] for k in keys} for s in shapes])


def config_validates(cfg, updates: dict) -> bool:
    """Whether ``type(cfg)`` accepts ``cfg`` with ``updates`` (transformers validates configs on load and
    save, e.g. LlamaConfig requires ``hidden_size % num_attention_heads == 0``)."""
    d = cfg.to_dict()
    d.pop(LAYER_SHAPES_KEY, None)
    d.update(updates)
    try:
        type(cfg).from_dict(d)
    except Exception:  # noqa: BLE001 - any rejection means "not loadable by plain from_pretrained"
        return False
    return True


def plain_loadable(model) -> bool:
    """True when ``AutoModelForCausalLM.from_pretrained`` rebuilds the saved model (no per-layer widths)."""
    return not getattr(model.config, LAYER_SHAPES_KEY, None)


def is_uniform(model) -> bool:
    shapes = layer_shapes(model)
    return all(s == shapes[0] for s in shapes)
