"""Cost measurements taken on an artifact itself: parameters, bytes, bits per weight and MACs.

Dense parameters, non-zero parameters and bytes are different numbers and all are reported:
unstructured zeros shrink neither the tensors, the file, the memory nor the multiply-accumulates of
the dense kernels used here; 4-bit packing shrinks bytes without removing parameters or MACs.

- A packed 4-bit tensor counts as its logical number of weights (``quant_state.shape``), not the
  number of uint8 elements it is stored in (two weights per byte).
- Weight memory is the storage of every parameter and buffer, plus the tensors of bitsandbytes'
  quantization state that are not parameters (4-bit: ``absmax``, the code table, and with double
  quantization the second-level ``absmax``/code; int8: the per-row scales ``SCB``). It is measured
  after loading and again after one inference forward: bitsandbytes 0.50.2 on a CPU with AVX512-BF16
  repacks every 4-bit weight at its first forward under ``no_grad`` and, for double quantization,
  replaces the 8-bit absmax by bf16 absmax (4.25 instead of 4.127 bits per weight while running).
- MACs (multiply-accumulates) of one forward pass of ``seqlen`` tokens, batch 1, without a KV cache:
  every Linear layer counted by ptflops (pytorch backend, module hooks; 4-bit and int8 bitsandbytes
  Linear layers counted like their dense equivalents, ``in_features * out_features`` per token, plus
  one per output for a bias), plus attention's two matmuls inside scaled-dot-product attention,
  which ptflops does not see::

      scores  QK^T: n_q_heads * L_q * L_k * head_dim     per layer
      values  AV:   n_q_heads * L_q * L_k * head_dim_v   per layer

  with ``n_q_heads = q_proj.out_features / head_dim`` and ``head_dim_v = v_proj.out_features /
  (k_proj.out_features / head_dim)`` read from each layer's modules, so a structurally pruned model
  (fewer heads or channels) is counted as it is. ``L_q = L_k = seqlen``; the full ``L x L`` products
  are counted because the math SDPA kernel computes them before masking (a causal-aware kernel
  could skip about half). Softmax, RoPE, norms, activations, residual adds and the embedding lookup
  are not multiply-accumulates of weights and are not counted.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch
from torch import nn

from ..modules import dense_weight, measure_sparsity, prunable_linears

def logical_numel(param: torch.Tensor) -> int:
    """Number of weights a parameter represents (unpacks bitsandbytes 4-bit storage)."""
    qs = getattr(param, "quant_state", None)
    if qs is not None and getattr(qs, "shape", None) is not None:
        return int(torch.Size(qs.shape).numel())
    return param.numel()


def _tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def quant_state_tensors(param: torch.Tensor) -> list[torch.Tensor]:
    """The tensors bitsandbytes keeps beside a quantized weight that are not parameters or buffers.

    4-bit (``Params4bit.quant_state``): ``absmax`` (one per block; uint8 with double quantization),
    ``code`` (16-entry table), and with double quantization ``offset`` and the nested state's
    ``absmax`` (fp32, one per 256 blocks) and ``code`` (256 entries). int8 (``Int8Params``): ``SCB``
    (one fp32 scale per output row).
    """
    out = []
    qs = getattr(param, "quant_state", None)
    if qs is not None:
        out += [qs.absmax, qs.code, getattr(qs, "offset", None)]
        s2 = getattr(qs, "state2", None)
        if s2 is not None:
            out += [s2.absmax, s2.code]
    scb = getattr(param, "SCB", None)
    if isinstance(scb, torch.Tensor):
        out.append(scb)
    return [t for t in out if isinstance(t, torch.Tensor)]


def module_quant_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Quantization tensors a bitsandbytes Linear holds outside its parameters: the weight's quant
    state (:func:`quant_state_tensors`) and, for ``Linear8bitLt``, its matmul state (``state.CB``,
    ``state.SCB``), where bitsandbytes moves the int8 row scales at the first forward."""
    out = []
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor):
        out += quant_state_tensors(w)
    st = getattr(module, "state", None)
    for a in ("CB", "SCB"):
        t = getattr(st, a, None)
        if isinstance(t, torch.Tensor):
            out.append(t)
    return out


def _module_type(module: nn.Module) -> str:
    return type(module).__name__


@torch.no_grad()
def count_parameters(model: nn.Module) -> dict:
    """Logical and non-zero parameter counts (tied weights counted once).

    Returns:
        dict with ``parameters`` (logical count, 4-bit packed weights unpacked), ``nonzero_parameters``,
        ``parameters_by_module_type`` and ``nonzero_parameters_by_module_type`` (module class name,
        e.g. ``Linear``, ``Linear4bit``, ``Embedding``, ``LlamaRMSNorm`` -> count) and
        ``parameters_by_kind`` (``linear`` = Linear weights inside decoder blocks, ``embedding``,
        ``norm``, ``other``).
    """
    seen: set[int] = set()
    total = nonzero = 0
    by_kind = {"linear": 0, "embedding": 0, "norm": 0, "other": 0}
    by_type: dict[str, int] = {}
    nz_by_type: dict[str, int] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = logical_numel(p)
            if isinstance(module, nn.Linear) and p_name == "weight":
                nz = int((dense_weight(module) != 0).sum())
                kind = "linear" if ".layers." in f".{mod_name}." else "other"
            else:
                nz = int((p != 0).sum())
                cls = type(module).__name__.lower()
                kind = "embedding" if isinstance(module, nn.Embedding) else "norm" if "norm" in cls else "other"
            t = _module_type(module)
            total += n
            nonzero += nz
            by_kind[kind] += n
            by_type[t] = by_type.get(t, 0) + n
            nz_by_type[t] = nz_by_type.get(t, 0) + nz
    return {"parameters": total, "nonzero_parameters": nonzero, "parameters_by_module_type": by_type,
            "nonzero_parameters_by_module_type": nz_by_type, "parameters_by_kind": by_kind}


def weight_bytes_in_memory(model: nn.Module) -> dict:
    """Bytes of all parameter and buffer storage after loading, plus bitsandbytes quantization state.

    Shared tensors (tied embeddings) count once (deduplicated by data pointer).

    Returns:
        dict with ``weight_bytes_in_memory`` and ``weight_bytes_in_memory_by_module_type``.
    """
    seen: set[tuple] = set()
    total = 0
    by_type: dict[str, int] = {}

    def add(t, owner):
        nonlocal total
        if t is None or t.numel() == 0:
            return
        key = (t.device.type, t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            return
        seen.add(key)
        b = _tensor_bytes(t)
        total += b
        by_type[owner] = by_type.get(owner, 0) + b

    for module in model.modules():
        owner = _module_type(module)
        for p in module.parameters(recurse=False):
            add(p.data, owner)
            for q in quant_state_tensors(p):
                add(q, owner)
        for q in module_quant_tensors(module):
            add(q, owner)
        for b in module.buffers(recurse=False):
            add(b, owner)
    return {"weight_bytes_in_memory": total, "weight_bytes_in_memory_by_module_type": by_type}


def _code_tables(param: torch.Tensor) -> list[torch.Tensor]:
    qs = getattr(param, "quant_state", None)
    if qs is None:
        return []
    s2 = getattr(qs, "state2", None)
    return [t for t in (qs.code, getattr(s2, "code", None)) if isinstance(t, torch.Tensor)]


def linear_bits_per_weight(model: nn.Module) -> dict:
    """Stored bits per weight of the prunable (decoder-block) Linear weights, in memory.

    ``linear_bits_per_weight = 8 * (bytes of the weight tensors + their per-block quantization
    constants) / logical weights``: 32 for fp32, 4.127 for NF4 with double quantization at block size
    64 (QLoRA Sec. 3: 4 + 8/64 + 32/(64*256)), 4.5 for NF4/FP4 without it (4 + 32/64), ~8 + 32/in for
    int8 (one fp32 scale per row). ``linear_bits_per_weight_with_code_tables`` also counts the fixed
    per-layer lookup tables (16 fp32 4-bit codes, and with double quantization 256 fp32 8-bit codes,
    ~1 KiB per layer), which bitsandbytes stores for every layer. Biases are not counted.
    """
    bits = code_bits = weights = 0
    for lin in prunable_linears(model).values():
        w = lin.weight
        codes = {id(t) for t in _code_tables(w)}
        seen = {w.data.data_ptr()}
        bits += 8 * _tensor_bytes(w.data)
        for q in module_quant_tensors(lin):
            if q.data_ptr() in seen:
                continue  # e.g. int8 state.CB is the weight itself
            seen.add(q.data_ptr())
            if id(q) in codes:
                code_bits += 8 * _tensor_bytes(q)
            else:
                bits += 8 * _tensor_bytes(q)
        weights += logical_numel(w)
    return {"linear_weights": weights, "linear_weight_bytes": (bits + code_bits) // 8,
            "linear_bits_per_weight": bits / weights if weights else None,
            "linear_bits_per_weight_with_code_tables": (bits + code_bits) / weights if weights else None}


def linear_bits_per_weight_on_disk(model: nn.Module, ckpt_dir: str | os.PathLike) -> float | None:
    """Bits per weight of the prunable Linear weights as stored in the checkpoint's safetensors files:
    ``8 * bytes of {name}.weight and all its quantization-state entries / logical weights`` (code
    tables and the small serialized quant-state header included).

    Returns None when the checkpoint has no safetensors file.
    """
    from safetensors import safe_open

    mods = {n: logical_numel(m.weight) for n, m in prunable_linears(model).items()}
    nbytes = 0
    found = set()
    files = sorted(Path(ckpt_dir).glob("*.safetensors"))
    if not files:
        return None
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                mod, _, leaf = key.rpartition(".")
                if leaf in ("weight", "SCB", "weight_format") and mod in mods:
                    owner = mod
                elif ".weight." in key:  # 4-bit state: {mod}.weight.absmax, .quant_map, .nested_*, .quant_state.*
                    owner = key.split(".weight.", 1)[0]
                else:
                    continue
                if owner not in mods:
                    continue
                sl = sf.get_slice(key)
                n = 1
                for s in sl.get_shape():
                    n *= s
                nbytes += n * _DTYPE_BYTES[sl.get_dtype()]
                found.add(owner)
    weights = sum(mods[k] for k in found)
    return 8 * nbytes / weights if weights else None


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def disk_bytes(ckpt_dir: str | os.PathLike, pattern: str = "*.safetensors") -> int:
    """Bytes of the weight files of a checkpoint directory."""
    return sum(f.stat().st_size for f in Path(ckpt_dir).glob(pattern))


# ----------------------------------------------------------------------------------------- MACs


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Self-attention modules: those with ``q_proj``, ``k_proj``, ``v_proj`` Linear children and a
    ``head_dim`` attribute (Llama, Gemma-3, Mistral, Qwen2 in transformers)."""
    return {n: m for n, m in model.named_modules()
            if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj"))
            and isinstance(getattr(m, "head_dim", None), int)}


def attention_shape(attn: nn.Module) -> dict:
    """Head counts and widths of one attention module, read from its projections.

    Returns:
        ``{"q_heads", "kv_heads", "head_dim", "head_dim_v"}``.

    Raises:
        ValueError: projection widths that are not whole multiples of ``head_dim``.
    """
    hd = int(attn.head_dim)
    q_out, k_out, v_out = attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features
    if q_out % hd or k_out % hd:
        raise ValueError(f"q_proj/k_proj widths {q_out}/{k_out} are not multiples of head_dim {hd}")
    kv = k_out // hd
    if kv == 0 or v_out % kv:
        raise ValueError(f"v_proj width {v_out} does not split over {kv} key/value heads")
    return {"q_heads": q_out // hd, "kv_heads": kv, "head_dim": hd, "head_dim_v": v_out // kv}


def attention_macs_closed_form(shape: dict, l_q: int, l_k: int, batch: int = 1) -> tuple[int, int]:
    """``(score MACs, value MACs)`` of one attention layer: ``B*H_q*L_q*L_k*d`` and ``B*H_q*L_q*L_k*d_v``."""
    s = batch * shape["q_heads"] * l_q * l_k * shape["head_dim"]
    v = batch * shape["q_heads"] * l_q * l_k * shape["head_dim_v"]
    return s, v


def _linear_hook(module, inputs, output):
    """ptflops-style hook for bitsandbytes Linear layers: dense-equivalent MACs."""
    from ptflops.pytorch_ops import linear_flops_counter_hook

    linear_flops_counter_hook(module, inputs, output)


@torch.no_grad()
def count_macs(model: nn.Module, seqlen: int, *, vocab_size: int | None = None, seed: int = 0) -> dict:
    """MACs of one forward pass of ``seqlen`` tokens (batch 1, no KV cache), see the module doc.

    Linear layers are counted by ptflops 0.7.5 (``backend="pytorch"``, functional patching off so no op
    is counted twice); attention score/value products are added from forward hooks on each attention
    module, using the sequence length it actually saw and its module shapes.

    Returns:
        dict with ``macs``, ``gmacs``, ``macs_linear``, ``macs_attention_scores``,
        ``macs_attention_values``, ``macs_seqlen`` and ``attention_layers`` (per-layer head counts).

    Raises:
        ValueError: ``seqlen`` < 1.
        RuntimeError: ptflops failed on the model.
    """
    from ptflops import get_model_complexity_info

    if int(seqlen) < 1:
        raise ValueError(f"seqlen {seqlen!r} must be >= 1")
    extra_hooks = {}
    try:
        import bitsandbytes as bnb

        extra_hooks = {bnb.nn.Linear4bit: _linear_hook, bnb.nn.Linear8bitLt: _linear_hook}
    except ImportError:  # pragma: no cover - bitsandbytes is a dependency
        pass
    vocab = vocab_size or int(model.get_input_embeddings().num_embeddings)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, int(seqlen)), generator=g).to(device)

    attn = attention_modules(model)
    shapes = {n: attention_shape(m) for n, m in attn.items()}
    seen_len: dict[str, int] = {}
    handles = []
    for name, mod in attn.items():
        def hook(m, args, kwargs, output, name=name):
            hs = kwargs.get("hidden_states", args[0] if args else None)
            seen_len[name] = int(hs.shape[1]) if hs is not None else int(output[0].shape[1])
        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            macs_linear, _ = get_model_complexity_info(
                model, (int(seqlen),), input_constructor=lambda _res: {"input_ids": ids, "use_cache": False},
                print_per_layer_stat=False, as_strings=False, backend="pytorch", ost=sink,
                custom_modules_hooks=extra_hooks, backend_specific_config={"count_functional": False},
            )
    finally:
        for h in handles:
            h.remove()
    if macs_linear is None:
        raise RuntimeError(f"ptflops could not count the model: {sink.getvalue()[-2000:]}")
    scores = values = 0
    for name, sh in shapes.items():
        if name not in seen_len:
            continue  # a module that did not run (e.g. a shared/unused block)
        s, v = attention_macs_closed_form(sh, seen_len[name], seen_len[name])
        scores += s
        values += v
    total = int(macs_linear) + scores + values
    per_layer = [shapes[n] for n in attn if n in seen_len]
    return {
        "macs": total,
        "gmacs": total / 1e9,
        "macs_linear": int(macs_linear),
        "macs_attention_scores": scores,
        "macs_attention_values": values,
        "macs_seqlen": int(seqlen),
        "attention_q_heads_total": sum(s["q_heads"] for s in per_layer),
        "attention_kv_heads_total": sum(s["kv_heads"] for s in per_layer),
    }


# ---------------------------------------------------------------------------------- sparsity notes


@torch.no_grad()
def nm_pattern(model: nn.Module) -> str | None:
    """``"2:4"`` or ``"4:8"`` when every prunable Linear weight has at most N non-zeros in every group of
    M consecutive input weights (and some zeros), else None."""
    lins = list(prunable_linears(model).values())
    if not lins:
        return None
    for n, m in ((2, 4), (4, 8)):
        ok = True
        for lin in lins:
            w = dense_weight(lin)
            if w.shape[1] % m:
                ok = False
                break
            if int((w.reshape(w.shape[0], -1, m) != 0).sum(-1).max()) > n:
                ok = False
                break
        if ok:
            return f"{n}:{m}"
    return None


def cost_notes(*, sparsity: float, pattern: str | None, quant: str | None) -> list[str]:
    """Plain statements of what the measured numbers do and do not include."""
    notes = [
        "MACs are dense-equivalent: every Linear (LM head included, over all positions) plus attention "
        "QK^T and AV over the full LxL; zero weights are multiplied like any other."
    ]
    if sparsity > 0:
        if pattern:
            notes.append(
                f"{pattern} semi-structured sparsity ({sparsity:.4f}): "
                + ("2:4 could be accelerated by sparse tensor cores on NVIDIA Ampere or newer GPUs "
                   "(e.g. torch.sparse.to_sparse_semi_structured), " if pattern == "2:4" else "")
                + "but it is not here: weights are stored and multiplied densely, so bytes, MACs and "
                  "latency do not shrink with it."
            )
        else:
            notes.append(
                f"exact zeros in {sparsity:.4f} of the prunable weights (no N:M pattern; from pruning, from the "
                "source weights"
                + (f", or from rounding to the {quant} zero code" if quant in ("nf4", "nf4-dq", "fp4", "int8") else "")
                + "): they are stored and multiplied densely, so they reduce neither bytes on disk, weight "
                "memory, MACs nor latency here; they only show in nonzero_parameters."
            )
    if quant in ("nf4", "nf4-dq", "fp4"):
        notes.append(
            f"{quant}: 4-bit weights shrink bytes; bitsandbytes dequantizes them to the compute dtype for "
            "every matmul, so MACs are unchanged and CPU latency is usually worse than fp32."
        )
    elif quant == "int8":
        notes.append(
            "int8 (LLM.int8()): int8 weights shrink bytes; the matmul runs int8 with fp16 outlier columns "
            "(on CPU through bitsandbytes' fallback), so MACs are unchanged and latency is not expected to improve."
        )
    return notes


def cost_metrics(model: nn.Module, ckpt_dir: str | os.PathLike, *, seqlen: int | None = None) -> dict:
    """Parameter counts, sparsity, bytes on disk and in memory, Linear bits/weight and (if ``seqlen``)
    MACs, all measured on the loaded model and its checkpoint directory."""
    params = count_parameters(model)
    sp = measure_sparsity(model)
    out = {
        **params,
        "sparsity": sp["sparsity"],
        "prunable_weights": sp["prunable_weights"],
        "zero_weights": sp["zero_weights"],
        "disk_bytes": disk_bytes(ckpt_dir),
        **weight_bytes_in_memory(model),
        **linear_bits_per_weight(model),
        "linear_bits_per_weight_on_disk": linear_bits_per_weight_on_disk(model, ckpt_dir),
    }
    if seqlen is not None:
        out.update(count_macs(model, seqlen))
        # bitsandbytes may re-layout 4-bit weights at the first inference forward (on CPUs with
        # AVX512-BF16 it repacks them and replaces double-quantized absmax by bf16 absmax): report
        # the bytes the running model actually holds too
        after = weight_bytes_in_memory(model)["weight_bytes_in_memory"]
        lb = linear_bits_per_weight(model)
        out["weight_bytes_in_memory_after_forward"] = after
        out["linear_bits_per_weight_after_forward"] = lb["linear_bits_per_weight"]
    return out
