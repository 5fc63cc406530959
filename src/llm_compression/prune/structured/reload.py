"""Reloading structurally pruned checkpoints whose decoder layers have different widths.

transformers 5.23 builds ``LlamaAttention`` / ``LlamaMLP`` (and the Gemma-3 equivalents) from the
*config*: ``q_proj`` has ``num_attention_heads * head_dim`` rows, ``k_proj``/``v_proj``
``num_key_value_heads * head_dim``, the MLP ``intermediate_size`` channels, and the attention
forward repeats key/value heads by the module attribute ``num_key_value_groups`` (set from the
config at construction) while reshaping by ``head_dim``. One config therefore describes one width
for all layers, and ``AutoModelForCausalLM.from_pretrained`` refuses a checkpoint whose layers
differ (size mismatch). transformers 5.23 also has a ``per_layer_config`` (heterogeneous config)
mechanism, but only on the config side: ``LlamaConfig`` validation reads ``num_attention_heads``
globally and refuses it as an ambiguous per-layer attribute, and the Llama modules do not read
per-layer configs, so it cannot describe a pruned Llama. LlamaConfig also refuses ``hidden_size``
not divisible by ``num_attention_heads`` (on load and on save), even with an explicit ``head_dim``;
such uniform widths take the per-layer path as well. :func:`load_pruned` builds the model from the config, resizes each
layer's modules to the widths in ``config.pruned_layer_shapes``, sets ``num_key_value_groups`` per
layer, and loads the saved tensors strictly.

Usage (the one documented call; :func:`llm_compression.models.load_checkpoint` uses it
automatically when ``compression.json`` / ``config.json`` say the widths differ)::

    from llm_compression.prune.structured import load_pruned
    model, tokenizer = load_pruned("results/smollm2-135m/pruned/llmpruner-element1_block_0.5_x1")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ...modules import decoder_layers
from .apply import LAYER_SHAPES_KEY, sync_metadata


def needs_structured_loader(ckpt_dir: str | os.PathLike) -> bool:
    """Whether ``config.json`` of ``ckpt_dir`` lists per-layer widths (plain ``from_pretrained`` would fail)."""
    p = Path(ckpt_dir) / "config.json"
    return p.exists() and bool(json.loads(p.read_text()).get(LAYER_SHAPES_KEY))


def _empty_linear(in_f: int, out_f: int, bias: bool, dtype) -> nn.Linear:
    lin = nn.Linear(in_f, out_f, bias=bias, device="meta", dtype=dtype)
    lin.weight = nn.Parameter(torch.empty(out_f, in_f, dtype=dtype))
    if bias:
        lin.bias = nn.Parameter(torch.empty(out_f, dtype=dtype))
    return lin


def resize_layers(model, shapes: list[dict]) -> None:
    """Replace the q/k/v/o and gate/up/down Linear modules of each decoder layer with uninitialized
    ones of the widths in ``shapes`` (``num_attention_heads``, ``num_key_value_heads``,
    ``intermediate_size`` per layer; ``head_dim`` and ``hidden_size`` from the config).

    Raises:
        ValueError: ``shapes`` does not have one entry per decoder layer.
    """
    layers = decoder_layers(model)
    if len(shapes) != len(layers):
        raise ValueError(f"{LAYER_SHAPES_KEY} has {len(shapes)} entries for {len(layers)} decoder layers")
    hidden = model.config.hidden_size
    for blk, s in zip(layers, shapes):
        attn, mlp = blk.self_attn, blk.mlp
        d = int(attn.head_dim)
        nq, nkv, inter = s["num_attention_heads"], s["num_key_value_heads"], s["intermediate_size"]
        dtype = attn.q_proj.weight.dtype
        for name, i, o in (("q_proj", hidden, nq * d), ("k_proj", hidden, nkv * d), ("v_proj", hidden, nkv * d),
                           ("o_proj", nq * d, hidden)):
            old = getattr(attn, name)
            setattr(attn, name, _empty_linear(i, o, old.bias is not None, dtype))
        for name, i, o in (("gate_proj", hidden, inter), ("up_proj", hidden, inter), ("down_proj", inter, hidden)):
            old = getattr(mlp, name)
            setattr(mlp, name, _empty_linear(i, o, old.bias is not None, dtype))


def _four_bit_config(config, ckpt_dir) -> dict | None:
    """The checkpoint's bitsandbytes 4-bit ``quantization_config`` as a dict, None when unquantized.

    Raises:
        ValueError: a quantization this loader cannot build (anything but bitsandbytes 4-bit).
    """
    q = getattr(config, "quantization_config", None)
    if q is None:
        return None
    q = q if isinstance(q, dict) else q.to_dict()
    if q.get("quant_method") != "bitsandbytes" or not q.get("load_in_4bit"):
        raise ValueError(f"checkpoint {ckpt_dir} has per-layer widths and quantization {q.get('quant_method')!r} "
                         f"(4-bit: {q.get('load_in_4bit')}); only bitsandbytes 4-bit (nf4, fp4) is supported here")
    return q


def load_pruned(ckpt_dir: str | os.PathLike, *, dtype: str | None = None, device: str = "cpu"):
    """Load ``(model, tokenizer)`` of a structurally pruned checkpoint, uniform or not.

    ``tokenizer`` is None when the directory holds no tokenizer files.

    Reads ``config.json`` (with ``pruned_layer_shapes`` when layer widths differ), builds the model,
    resizes each layer (:func:`resize_layers`), loads ``model.safetensors`` strictly (a tied LM head
    is re-tied, not read), and returns it in eval mode. Logits equal those of the model that was saved.
    A checkpoint written by :func:`llm_compression.quantize.quantize_checkpoint` (bitsandbytes 4-bit,
    ``quantization_config`` in ``config.json``) comes back with the same ``Linear4bit`` layers and
    quant states, so its logits equal those of the quantized model before saving.

    Args:
        dtype: ``"float32"``/``"bfloat16"``/``"float16"`` or None (the saved dtype).
        device: ``"cpu"`` or ``"cuda"``.

    Raises:
        FileNotFoundError: no ``config.json`` or no ``*.safetensors`` in ``ckpt_dir``.
        RuntimeError: tensors missing from, or unexpected in, the checkpoint.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "config.json").exists():
        raise FileNotFoundError(f"{ckpt_dir} is not a checkpoint directory (no config.json)")
    files = sorted(ckpt_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ckpt_dir} has no *.safetensors weights")
    config = AutoConfig.from_pretrained(ckpt_dir)
    torch_dtype = getattr(torch, dtype) if dtype else (config.dtype if isinstance(config.dtype, torch.dtype)
                                                       else getattr(torch, str(config.dtype or "float32")))
    qcfg = _four_bit_config(config, ckpt_dir)
    if qcfg is not None:
        del config.quantization_config  # built below with bitsandbytes, not by transformers' loader
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    shapes = getattr(config, LAYER_SHAPES_KEY, None)
    if shapes:
        resize_layers(model, shapes)
    sync_metadata(model)  # module attributes follow the (resized, still empty) tensors; loading keeps shapes
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    four_bit: list[str] = []
    if qcfg is not None:
        from ...quantize import load_4bit_state, replace_linears_4bit

        four_bit = replace_linears_4bit(model, quant_type=qcfg["bnb_4bit_quant_type"],
                                        double_quant=bool(qcfg.get("bnb_4bit_use_double_quant")),
                                        compute_dtype=str(qcfg.get("bnb_4bit_compute_dtype") or "float32"),
                                        quantize=False)
        load_4bit_state(model, state, four_bit, device="cpu")
    state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not any(k.startswith(n + ".weight") for n in four_bit)]
    head = model.get_output_embeddings()
    tied = bool(getattr(config, "tie_word_embeddings", False)) or (
        getattr(config, "get_text_config", None) and getattr(config.get_text_config(), "tie_word_embeddings", False))
    if tied and head is not None:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt_dir} does not match its config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if qcfg is not None:
        from ...modules import bnb_cpu_fallback

        model.config.quantization_config = qcfg
        bnb_cpu_fallback(model)
    model.to(device)
    model.eval()
    has_tok = any((ckpt_dir / f).exists() for f in ("tokenizer_config.json", "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(ckpt_dir) if has_tok else None
    return model, tok
