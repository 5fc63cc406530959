"""Checkpoints on disk: saving, loading (plain, per-layer widths, bitsandbytes 4-bit) and provenance.

A *checkpoint* is a Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer files)
plus ``compression.json`` saying how it was made (:func:`write_compression`, used by every stage).
:func:`load_checkpoint` loads any checkpoint of this project: plain ones through ``from_pretrained``,
4-bit/8-bit ones through their saved ``quantization_config``, and structurally pruned ones whose
decoder layers have different widths through :func:`load_pruned`.

This module owns loading so that :mod:`llm_compression.models` (sources), :mod:`llm_compression.prune`
and :mod:`llm_compression.quantize` import it and not each other. It imports torch only inside
functions (importing it stays light).

Per-layer widths: transformers 5.23 builds ``LlamaAttention`` / ``LlamaMLP`` (and the Gemma-3
equivalents) from the *config*: ``q_proj`` has ``num_attention_heads * head_dim`` rows, ``k_proj``/``v_proj``
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

Usage::

    from llm_compression.checkpoint import load_checkpoint   # also llm_compression.models.load_checkpoint
    model, tokenizer = load_checkpoint("results/smollm2-135m/pruned/llmpruner-element1_block_0.5_x1")
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from .io import atomic_dir, read_json, write_json_atomic
from .options.quantization import DEFAULT_BLOCKSIZE

COMPRESSION_FILE = "compression.json"
# config key with the per-layer widths of a checkpoint whose decoder layers differ (defined with the pruning
# options, which structured pruning and this loader both read)
from .options.pruning import LAYER_SHAPES_KEY  # noqa: E402,F401


# --------------------------------------------------------------------------- provenance and saving

def library_versions() -> dict:
    """Versions of the libraries that shape a checkpoint's numbers."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "bitsandbytes", "llm-compression"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def provenance(stage: str, parent: str, **fields) -> dict:
    """The ``compression.json`` content of one stage's checkpoint: ``stage``, ``parent`` (the input
    checkpoint), ``parent_compression`` (its own ``compression.json``, so the chain is complete), the
    stage's ``fields`` in the order given, and ``library_versions``."""
    return {"stage": stage, "parent": parent, "parent_compression": read_compression(parent), **fields,
            "library_versions": library_versions()}


def write_compression(out_dir: str | os.PathLike, info: dict) -> dict:
    """Write ``compression.json`` (the provenance of a checkpoint) into ``out_dir``; the one writer every
    stage uses. ``library_versions`` and ``created_unix`` are added when absent. Returns what was written."""
    info = dict(info)
    info.setdefault("library_versions", library_versions())
    info.setdefault("created_unix", time.time())
    write_json_atomic(Path(out_dir) / COMPRESSION_FILE, info)
    return info


def save_checkpoint(model, tokenizer, out_dir: str | os.PathLike, compression: dict) -> None:
    """Save a model + tokenizer + ``compression.json`` to ``out_dir`` atomically.

    ``compression`` should hold the parent checkpoint, the parameters that made this one and the
    measured result; library versions and a timestamp are added here.
    """
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_compression(tmp, compression)


def read_compression(ckpt_dir: str | os.PathLike) -> dict:
    """The ``compression.json`` of a checkpoint ({} when absent, e.g. a foreign checkpoint)."""
    p = Path(ckpt_dir) / COMPRESSION_FILE
    return read_json(p) if p.exists() else {}


def needs_structured_loader(ckpt_dir: str | os.PathLike) -> bool:
    """Whether a checkpoint has per-layer widths that plain ``from_pretrained`` cannot build: its
    ``compression.json`` says ``result.structured.plain_loadable: false`` or its ``config.json`` has
    ``pruned_layer_shapes``. (The one definition; the plain/per-layer/4-bit routes of
    :func:`load_checkpoint` and :func:`llm_compression.quantize.quantize_checkpoint` follow it.)"""
    comp = read_compression(ckpt_dir)
    st = (comp.get("result") or {}).get("structured") or {}
    if st.get("plain_loadable") is False:
        return True
    cfg = Path(ckpt_dir) / "config.json"
    return cfg.exists() and bool(json.loads(cfg.read_text()).get(LAYER_SHAPES_KEY))


def spread_device_map(model, gpus: int, device_mb: int | None = None) -> dict:
    """accelerate's device map that spreads ``model`` over GPUs ``0 .. gpus-1``, whole decoder blocks per GPU
    (``infer_auto_device_map`` with ``max_memory`` = ``device_mb`` per GPU, else each GPU's free memory).

    Raises:
        ValueError: ``gpus`` < 2, or the model does not fit the GPUs (a part would go to the CPU or disk; the
            message names the parts and the memory given).
    """
    from accelerate import infer_auto_device_map

    if int(gpus) < 2:
        raise ValueError(f"gpus {gpus!r}: spreading needs at least 2 GPUs")
    if device_mb:
        max_memory = {i: int(float(device_mb) * 10**6) for i in range(int(gpus))}
    else:
        import torch

        max_memory = {i: torch.cuda.mem_get_info(i)[0] for i in range(int(gpus))}
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    off = sorted(k for k, v in device_map.items() if not isinstance(v, int))
    if off:
        raise ValueError(f"the model does not fit {gpus} GPUs of {max(max_memory.values()) / 1e6:,.1f} MB: "
                         f"{', '.join(k or 'the whole model' for k in off[:5])} would go to {device_map[off[0]]}; "
                         f"ask for more GPUs (resources.stages.<stage>.gpus) or stream")
    return dict(device_map)


def spread_model(model, gpus: int, device_mb: int | None = None) -> dict:
    """Place a loaded model's layers on GPUs ``0 .. gpus-1`` (:func:`spread_device_map`, accelerate's
    ``dispatch_model``: each block runs on its GPU and hooks move the hidden states between them, so inputs go to
    the first GPU as for a one-GPU model). Returns the device map.

    Raises:
        ValueError: see :func:`spread_device_map`.
    """
    from accelerate import dispatch_model

    device_map = spread_device_map(model, gpus, device_mb)
    dispatch_model(model, device_map=device_map)
    return device_map


def load_checkpoint(ckpt_dir: str | os.PathLike, *, dtype: str | None = None, device: str = "cpu",
                    tokenizer: bool = True, gpus: int = 1, device_mb: int | None = None):
    """Load ``(model, tokenizer)`` from a checkpoint directory written by this project.

    4-bit/8-bit checkpoints (bitsandbytes) reload through their saved ``quantization_config``; 4-bit
    layers whose shapes bitsandbytes' AVX512-BF16 CPU kernel cannot run are routed to its generic CPU
    path (:func:`llm_compression.modules.bnb_cpu_fallback`).
    Structurally pruned checkpoints whose decoder layers have different widths (``compression.json``
    ``result.structured.plain_loadable`` is false, or ``config.json`` lists ``pruned_layer_shapes``) reload
    through :func:`load_pruned`; uniform ones through plain
    ``from_pretrained``.

    ``tokenizer=False`` returns ``(model, None)`` without loading the tokenizer (measurements that feed
    token ids or count parameters: the tokenizer costs more start-up than the model of a small checkpoint).
    ``gpus`` > 1 (on CUDA) spreads the model's layers over that many GPUs (:func:`spread_model`; ``device_mb``
    per GPU), for a model that does not fit one.

    Raises:
        FileNotFoundError: ``ckpt_dir`` has no ``config.json``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "config.json").exists():
        raise FileNotFoundError(f"{ckpt_dir} is not a checkpoint directory (no config.json)")
    if int(gpus) > 1:  # loaded on the host, then its layers spread over the GPUs
        if not str(device).startswith("cuda"):
            raise ValueError(f"gpus={gpus} spreads a model over GPUs; device {device!r} is not cuda")
        model, tok = load_checkpoint(ckpt_dir, dtype=dtype, device="cpu", tokenizer=tokenizer)
        spread_model(model, gpus, device_mb)
        return model, tok
    if needs_structured_loader(ckpt_dir):
        return load_pruned(ckpt_dir, dtype=dtype, device=device, tokenizer=tokenizer)
    tok = AutoTokenizer.from_pretrained(ckpt_dir) if tokenizer else None
    kw = {}
    if dtype is not None:
        kw["dtype"] = getattr(torch, dtype)
    if device != "cpu":
        kw["device_map"] = device
    model = AutoModelForCausalLM.from_pretrained(ckpt_dir, **kw)
    if getattr(model.config, "quantization_config", None) is not None:
        from .modules import bnb_cpu_fallback

        bnb_cpu_fallback(model)  # 4-bit shapes bitsandbytes' AVX512-BF16 CPU kernel cannot run
    model.eval()
    return model, tok


# --------------------------------------------------------------------------- per-layer widths


def _empty_linear(in_f: int, out_f: int, bias: bool, dtype):
    import torch
    from torch import nn

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
    from .modules import decoder_layers

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


def load_pruned(ckpt_dir: str | os.PathLike, *, dtype: str | None = None, device: str = "cpu",
                tokenizer: bool = True):
    """Load ``(model, tokenizer)`` of a structurally pruned checkpoint, uniform or not.

    ``tokenizer`` is None when the directory holds no tokenizer files, or when ``tokenizer=False``.

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
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .prune.structured.apply import sync_metadata

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
        from .modules import bnb_cpu_fallback

        model.config.quantization_config = qcfg
        bnb_cpu_fallback(model)
    model.to(device)
    model.eval()
    has_tok = any((ckpt_dir / f).exists() for f in ("tokenizer_config.json", "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(ckpt_dir) if has_tok and tokenizer else None
    return model, tok


# --------------------------------------------------------------------------- bitsandbytes 4-bit layers

def replace_linears_4bit(model, *, quant_type: str, double_quant: bool, compute_dtype: str,
                         blocksize: int = DEFAULT_BLOCKSIZE, device: str = "cpu", quantize: bool = True) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` except the output head with a bitsandbytes ``Linear4bit``.

    Args:
        quant_type: ``"nf4"`` or ``"fp4"``; double_quant: 8-bit absmax constants (QLoRA Sec. 3).
        compute_dtype: dtype the 4-bit weight is dequantized to for each matmul.
        blocksize: weights per absmax constant.
        quantize: True quantizes each layer's current weight ``[out, in]``; False leaves empty shells
            whose weights are set from a saved state (:func:`load_4bit_state`).

    Returns:
        the names of the replaced layers.
    """
    import bitsandbytes as bnb
    import torch
    from torch import nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None  # or one block
    names = []
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear) or mod is head or isinstance(mod, bnb.nn.Linear4bit):
            continue
        new = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                compute_dtype=getattr(torch, compute_dtype), compress_statistics=double_quant,
                                quant_type=quant_type, device="meta")
        if quantize:
            new.weight = bnb.nn.Params4bit(mod.weight.data.float().contiguous(), requires_grad=False,
                                           blocksize=int(blocksize), compress_statistics=double_quant,
                                           quant_type=quant_type, quant_storage=torch.uint8, module=new).to(device)
        if mod.bias is not None:
            new.bias = nn.Parameter(mod.bias.data.to(device), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        names.append(name)
    return names


def load_4bit_state(model, state: dict, names: list[str], device: str = "cpu") -> None:
    """Set the weights of the ``Linear4bit`` layers ``names`` from a saved state dict (packed 4-bit
    ``<name>.weight`` plus its ``<name>.weight.<quant state>`` entries), removing those keys from ``state``.

    Raises:
        RuntimeError: a layer's weight or quant state is missing from ``state``.
    """
    import bitsandbytes as bnb

    for name in names:
        mod = model.get_submodule(name)
        key = f"{name}.weight"
        stats = {k[len(key) + 1:]: state.pop(k) for k in [k for k in state if k.startswith(key + ".")]}
        if key not in state or not stats:
            raise RuntimeError(f"4-bit layer {name}: {key} or its quant state is missing from the checkpoint")
        mod.weight = bnb.nn.Params4bit.from_prequantized(state.pop(key), stats, requires_grad=False,
                                                         device=device, module=mod)
