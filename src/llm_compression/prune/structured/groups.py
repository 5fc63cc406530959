"""Dependency groups for structured pruning of Llama-family and Gemma-3 decoders.

A *group* is a set of weight slices that must be removed together so that the network stays a
well-formed, smaller network (LLM-Pruner, Ma et al. 2023, Sec. 3.1 "Discover all coupled
structures"). Each :class:`GroupSet` holds ``n_groups`` groups of one kind; every *member* of the
set is one parameter tensor cut into ``n_groups`` contiguous blocks of ``block`` indices along
``dim``, block ``i`` belonging to group ``i``.

Kinds (``GroupSet.kind``):

- ``"query_head"`` (one attention layer): query head ``h`` = rows ``[h*d, (h+1)*d)`` of ``q_proj``
  (and its bias) and columns ``[h*d, (h+1)*d)`` of ``o_proj``. With grouped-query attention
  (``n_q = n_rep * n_kv``), query head ``h`` reads key/value head ``h // n_rep``; so that every
  key/value head keeps the same number of query heads (transformers' ``repeat_kv`` needs it),
  query heads are pruned in equal numbers inside each key/value group (``GroupSet.partition``).
- ``"attention_head"`` (one multi-head attention layer, ``n_q == n_kv``; chosen automatically for
  ``attention="query_head"`` when every query head has its own key/value head): head ``h`` = rows
  ``[h*d, (h+1)*d)`` of ``q_proj``, ``k_proj``, ``v_proj`` (and biases) and columns of ``o_proj``.
  A query head cannot be removed without its key/value head here (one key/value head per query
  head must remain), so LLM-Pruner's MHA grouping applies: the whole head goes. With multi-query
  attention (``n_kv == 1``) the ``"query_head"`` kind prunes query heads from one pool, the single
  key/value head kept.
- ``"kv_group"`` (one attention layer): key/value group ``g`` = key/value head ``g`` (rows of
  ``k_proj``/``v_proj``) plus its ``n_rep`` query heads (a contiguous run of ``q_proj`` rows and
  ``o_proj`` columns).
- ``"mlp_channel"`` (one MLP): intermediate channel ``c`` = row ``c`` of ``gate_proj`` and
  ``up_proj`` and column ``c`` of ``down_proj``.
- ``"hidden_channel"`` (the whole model): hidden dimension ``j`` = column ``j`` of the token
  embedding, entry ``j`` of every hidden-size norm, column ``j`` of every q/k/v/gate/up projection,
  row ``j`` of every o/down projection (and their biases) and column ``j`` of an untied LM head.
  The number of hidden dimensions kept is rounded to a multiple of the number of query heads
  (``meta["keep_multiple"]``), because transformers' Llama config refuses ``hidden_size`` that is not
  a multiple of ``num_attention_heads`` when it loads or saves a checkpoint.

Levels: ``block`` = attention heads and MLP channels of the decoder blocks in a layer range;
``channel`` = the hidden dimension of the whole model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ...modules import decoder_layers
from ...options.pruning import ATTENTION_UNITS, GROUP_LEVELS, StructuredPruningError  # noqa: F401

log = logging.getLogger(__name__)

LEVELS = GROUP_LEVELS
#: model_type values whose decoder blocks have self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj
BLOCK_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
#: model types whose hidden dimension can be pruned (Gemma-3 is refused: see :func:`check_architecture`)
CHANNEL_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class Member:
    """One parameter tensor of a group set: ``n_groups`` contiguous blocks of ``block`` along ``dim``."""

    name: str  # parameter name in model.named_parameters(), e.g. "model.layers.3.self_attn.q_proj.weight"
    dim: int
    block: int


@dataclass
class GroupSet:
    """``n_groups`` coupled structures of one kind (see module docstring)."""

    kind: str
    layer: int | None  # decoder layer index; None for hidden channels
    n_groups: int
    members: list[Member]
    #: groups that must lose equal numbers (query heads per key/value head); None = one free pool
    partition: list[list[int]] | None = None
    meta: dict = field(default_factory=dict)


def _attr(module, path):
    for p in path.split("."):
        module = getattr(module, p, None)
        if module is None:
            return None
    return module


def model_type(model) -> str:
    return str(getattr(model.config, "model_type", ""))


def check_architecture(model, level: str) -> None:
    """Refuse models this module cannot prune at ``level``, naming what is missing.

    Raises:
        StructuredPruningError: unknown level; a model type outside :data:`BLOCK_MODEL_TYPES` /
            :data:`CHANNEL_MODEL_TYPES`; decoder blocks without the expected projections; Gemma-3 at
            the channel level (its embedding multiplies by ``sqrt(config.hidden_size)``, a constant
            rebuilt from the config on reload, so pruning the hidden size would change the function
            of the reloaded model).
    """
    if level not in LEVELS:
        raise StructuredPruningError(f"structured level {level!r} is not one of {', '.join(LEVELS)}")
    mt = model_type(model)
    allowed = BLOCK_MODEL_TYPES if level == "block" else CHANNEL_MODEL_TYPES
    if mt not in allowed:
        why = ""
        if mt == "gemma3_text" and level == "channel":
            why = (" (Gemma-3 scales token embeddings by sqrt(config.hidden_size), rebuilt from the config on "
                   "reload, and its embedding is tied to the LM head, so a pruned hidden size cannot keep the "
                   "scale; use level 'block')")
        raise StructuredPruningError(
            f"structured pruning at level {level!r} does not support model_type {mt!r}{why}; "
            f"supported: {', '.join(allowed)}"
        )
    try:
        layers = decoder_layers(model)
    except TypeError as e:
        raise StructuredPruningError(str(e)) from None
    need = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    for i, block in enumerate(layers):
        missing = [n for n in need if not isinstance(_attr(block, n), nn.Linear)]
        if missing:
            raise StructuredPruningError(
                f"decoder layer {i} of {type(model).__name__} lacks nn.Linear modules {missing}; "
                "structured pruning needs Llama-style self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj "
                "(a quantized checkpoint cannot be pruned structurally: prune its unquantized parent)"
            )


def resolve_layer_range(n_layers: int, layer_range) -> tuple[int, int]:
    """``[start, end)`` of the decoder layers pruned at the block level.

    ``None`` skips the first and the last layer, as LLM-Pruner's ``block_attention_layer_start`` /
    ``block_mlp_layer_end`` defaults leave the layers next to the embedding and the head intact.
    Negative values count from the end (``[1, -1]`` = the default).

    Raises:
        StructuredPruningError: not two integers, or an empty/out-of-bounds range.
    """
    if layer_range is None:
        layer_range = (1, -1) if n_layers > 2 else (0, n_layers)
    if not (isinstance(layer_range, (list, tuple)) and len(layer_range) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in layer_range)):
        raise StructuredPruningError(f"layer_range {layer_range!r} must be two integers [start, end) or null")
    start, end = (x + n_layers if x < 0 else x for x in layer_range)
    if not 0 <= start < end <= n_layers:
        raise StructuredPruningError(
            f"layer_range {list(layer_range)} is empty or outside the model's {n_layers} layers "
            f"(valid: 0 <= start < end <= {n_layers}, negatives count from the end)"
        )
    return start, end


def attention_shape(attn) -> dict:
    """Heads of one attention module, read from its tensors: ``n_q``, ``n_kv``, ``head_dim``."""
    d = int(attn.head_dim)
    n_q = attn.q_proj.out_features // d
    n_kv = attn.k_proj.out_features // d
    return {"n_q": n_q, "n_kv": n_kv, "head_dim": d}


def block_groups(model, *, layer_range=None, attention: str = "query_head", mlp: bool = True) -> list[GroupSet]:
    """Group sets of the ``block`` level: per decoder layer in ``layer_range``, attention heads
    (``attention`` = ``"query_head"``, ``"kv_group"`` or ``"none"``) and MLP channels.

    ``"query_head"`` yields kind ``"attention_head"`` (q, k, v and o slices of a head) on a
    multi-head layer (as many key/value heads as query heads), ``"query_head"`` otherwise (GQA,
    MQA: query heads only, equal numbers per key/value head).

    Raises:
        StructuredPruningError: unknown ``attention`` unit or bad ``layer_range``.
    """
    if attention not in ATTENTION_UNITS:
        raise StructuredPruningError(f"attention unit {attention!r} is not one of {', '.join(ATTENTION_UNITS)}")
    layers = decoder_layers(model)
    start, end = resolve_layer_range(len(layers), layer_range)
    names = {id(m): n for n, m in model.named_modules()}
    out: list[GroupSet] = []
    for i in range(start, end):
        blk = layers[i]
        attn = blk.self_attn
        s = attention_shape(attn)
        d, n_q, n_kv = s["head_dim"], s["n_q"], s["n_kv"]
        rep = n_q // n_kv
        q, k, v, o = (names[id(getattr(attn, p))] for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        if attention == "query_head" and n_q == n_kv and n_q > 1:  # MHA: a head is q + its own k, v
            mem = [Member(f"{q}.weight", 0, d), Member(f"{o}.weight", 1, d),
                   Member(f"{k}.weight", 0, d), Member(f"{v}.weight", 0, d)]
            for lin, nm in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v)):
                if lin.bias is not None:
                    mem.append(Member(f"{nm}.bias", 0, d))
            out.append(GroupSet("attention_head", i, n_q, mem, meta=dict(s)))
        elif attention == "query_head":
            mem = [Member(f"{q}.weight", 0, d), Member(f"{o}.weight", 1, d)]
            if attn.q_proj.bias is not None:
                mem.append(Member(f"{q}.bias", 0, d))
            out.append(GroupSet("query_head", i, n_q, mem,
                                partition=[list(range(g * rep, (g + 1) * rep)) for g in range(n_kv)],
                                meta=dict(s)))
        elif attention == "kv_group":
            mem = [Member(f"{q}.weight", 0, d * rep), Member(f"{o}.weight", 1, d * rep),
                   Member(f"{k}.weight", 0, d), Member(f"{v}.weight", 0, d)]
            for lin, nm, blk_w in ((attn.q_proj, q, d * rep), (attn.k_proj, k, d), (attn.v_proj, v, d)):
                if lin.bias is not None:
                    mem.append(Member(f"{nm}.bias", 0, blk_w))
            out.append(GroupSet("kv_group", i, n_kv, mem, meta=dict(s)))
        if mlp:
            g, u, dn = (names[id(getattr(blk.mlp, p))] for p in ("gate_proj", "up_proj", "down_proj"))
            n = blk.mlp.gate_proj.out_features
            mem = [Member(f"{g}.weight", 0, 1), Member(f"{u}.weight", 0, 1), Member(f"{dn}.weight", 1, 1)]
            for lin, nm in ((blk.mlp.gate_proj, g), (blk.mlp.up_proj, u)):
                if lin.bias is not None:
                    mem.append(Member(f"{nm}.bias", 0, 1))
            out.append(GroupSet("mlp_channel", i, n, mem, meta={"intermediate_size": n}))
    return out


def hidden_norms(model) -> list[tuple[str, nn.Module]]:
    """(name, module) of every normalization module over the hidden dimension (per-head q/k norms excluded)."""
    hidden = model.get_input_embeddings().weight.shape[1]
    out = []
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        if ("norm" in type(m).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1
                and w.shape[0] == hidden and not n.endswith(("q_norm", "k_norm"))):
            out.append((n, m))
    return out


def channel_groups(model) -> list[GroupSet]:
    """The one group set of the ``channel`` level: every hidden dimension of the model."""
    emb = model.get_input_embeddings()
    hidden = emb.weight.shape[1]
    names = {id(m): n for n, m in model.named_modules()}
    mem: list[Member] = [Member(f"{names[id(emb)]}.weight", 1, 1)]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not emb.weight:
        mem.append(Member(f"{names[id(head)]}.weight", 1, 1))
    for n, m in hidden_norms(model):
        for pn, p in m.named_parameters(recurse=False):
            if p.dim() == 1 and p.shape[0] == hidden:
                mem.append(Member(f"{n}.{pn}", 0, 1))
    for blk in decoder_layers(model):
        for path in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            mem.append(Member(f"{names[id(_attr(blk, path))]}.weight", 1, 1))
        for path in ("self_attn.o_proj", "mlp.down_proj"):
            lin = _attr(blk, path)
            mem.append(Member(f"{names[id(lin)]}.weight", 0, 1))
            if lin.bias is not None:
                mem.append(Member(f"{names[id(lin)]}.bias", 0, 1))
    heads = [attention_shape(blk.self_attn)["n_q"] for blk in decoder_layers(model)]
    multiple = math.lcm(*heads) if heads else 1
    meta = {"hidden_size": hidden}
    if multiple <= hidden // 2:
        meta["keep_multiple"] = multiple
        meta["keep_multiple_reason"] = ("number of query heads: transformers' Llama-family configs require "
                                        "hidden_size % num_attention_heads == 0 on load and save")
    return [GroupSet("hidden_channel", None, hidden, mem, meta=meta)]


def build_groups(model, level: str, *, layer_range=None, attention: str = "query_head") -> list[GroupSet]:
    """Group sets of ``level`` (``"block"`` or ``"channel"``) after :func:`check_architecture`.

    Raises:
        StructuredPruningError: see :func:`check_architecture`, :func:`block_groups`.
    """
    check_architecture(model, level)
    if level == "block":
        return block_groups(model, layer_range=layer_range, attention=attention)
    return channel_groups(model)
