"""GGUF export of a checkpoint for llama.cpp, with per-layer widths, and llama.cpp's own quantization.

:func:`export_gguf` writes one checkpoint of this project (``config.json``, ``*.safetensors``, optional
``pruned_layer_shapes``) as a GGUF file that llama.cpp loads:

- **architecture.** Every decoder layer with the same widths: the model's own llama.cpp architecture
  (``llama``). Widths that differ between layers (block-level structured pruning): ``deci``, whose
  ``attention.head_count``, ``attention.head_count_kv`` and ``feed_forward_length`` are per-layer arrays
  (llama.cpp ``src/models/deci.cpp``, written for Nemotron's variable blocks). Gemma-3 is refused: its
  norms store ``w - 1``, its embeddings are scaled and its layers alternate sliding-window attention,
  none of which this writer reproduces yet.
- **head size.** ``attention.key_length``, ``attention.value_length`` and ``rope.dimension_count`` are
  always written: llama.cpp otherwise derives the head size as ``embedding_length / head_count`` of the
  *first* layer, which is wrong once heads or the hidden size were pruned (a channel-pruned model with
  uniform layers needs it too).
- **rotary layout.** Hugging Face Llama rotates the halves of each head (``rotate_half``); llama.cpp's
  ``llama``/``deci`` rope rotates adjacent pairs. Rows of ``q_proj`` and ``k_proj`` are permuted inside each
  head, with each layer's *own* head counts (``rows / head_dim``), never the config's.
- **zero widths.** llama.cpp drops the attention output of a layer whose MLP has width 0 (``deci``'s
  FFN-free branch ``continue``\\ s before the residual is kept) and derives no head size when the first
  layer has no head. Such layers are written in an exactly equivalent padded form: one MLP channel whose
  gate, up and down weights are 0 (it adds ``down @ (silu(0) * 0) = 0``), or one query and one key/value
  head whose weights are 0 (its values are 0, so its attention output is 0 whatever the scores). The
  record lists each padding.
- **embeddings.** Tied embeddings write no ``output.weight`` (llama.cpp reuses ``token_embd``).
- **tokenizer.** Carried from the base model's GGUF when the base was one (the embedded models are):
  every ``tokenizer.*`` key, unchanged. Other bases: the Hugging Face ``tokenizer.json`` through the
  ``gguf`` package's vocabulary classes (BPE tokens, merges and special tokens).
- **rope scaling.** None, ``default`` and ``linear`` are written; ``llama3``, ``yarn``, ``dynamic`` and
  ``longrope`` are refused by name (their frequency factors are not written).

:func:`quantize_gguf` runs llama.cpp's own quantizer (``llama_model_quantize`` through llama-cpp-python)
on an exported f32/f16 file, and :func:`tensor_types` reads back what each tensor became: llama.cpp's
block quantizers need row lengths divisible by the block size (32 for Q8_0/Q5_0/Q4_0, 256 for k-quants)
and silently fall back to another type otherwise, so the record lists the effective type of every
tensor and the fallbacks, not just the requested label.

Memory: tensors are read one at a time from the safetensors files (``safe_open``), converted and handed
to the writer, which writes them out in order; the writer holds the converted tensors until the file is
written (``temp_file`` spills them to disk past 256 MB).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# schemes of the ``quantization`` grid axis that leave a GGUF file for llama.cpp (name -> llama.cpp file type):
# defined with the other quantization names (torch-free options layer)
from .options.quantization import GGUF_SCHEMES  # noqa: E402

#: GGUF file name inside a gguf-* artifact folder
GGUF_FILE = "model.gguf"
#: export record beside it (architecture, widths, paddings, per-tensor types, fallbacks)
GGUF_RECORD = "gguf.json"
#: the block size (values per row block) of the types llama.cpp's quantizer targets
_BLOCK = {"Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q2_K": 256, "Q3_K": 256, "Q4_K": 256,
          "Q5_K": 256, "Q6_K": 256, "IQ4_NL": 32}
#: the main type of each quantized file type (k-quant mixes use others for some tensors by design)
_MAIN_TYPE = {"MOSTLY_Q8_0": "Q8_0", "MOSTLY_Q4_K_M": "Q4_K", "MOSTLY_Q4_0": "Q4_0", "MOSTLY_Q5_K_M": "Q5_K",
              "MOSTLY_Q6_K": "Q6_K"}
_ROPE_OK = (None, "default", "linear")


class GGUFExportError(ValueError):
    """A checkpoint this writer cannot export faithfully (the message names what and why)."""


def is_gguf_scheme(scheme: str | None) -> bool:
    """Whether a quantization name of the grid makes a GGUF artifact (``gguf-*``)."""
    return bool(scheme) and str(scheme) in GGUF_SCHEMES


def is_gguf_artifact(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a GGUF artifact folder (holds :data:`GGUF_FILE`) or a ``.gguf`` file."""
    p = Path(path)
    return (p.is_dir() and (p / GGUF_FILE).exists()) or (p.is_file() and p.suffix == ".gguf")


def gguf_file(path: str | os.PathLike) -> Path:
    """The ``.gguf`` file of an artifact folder (or ``path`` itself when it is one).

    Raises:
        FileNotFoundError: no GGUF file there.
    """
    p = Path(path)
    f = p / GGUF_FILE if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"{path} holds no GGUF file ({GGUF_FILE})")
    return f


# --------------------------------------------------------------------------- reading the checkpoint


def _rope(cfg: dict) -> tuple[float, dict | None]:
    """``(rope_theta, scaling)`` of a config (transformers 5 ``rope_parameters`` or older ``rope_theta`` +
    ``rope_scaling``).

    Raises:
        GGUFExportError: a rope scaling type this writer does not reproduce.
    """
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or None
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = (scaling or params).get("rope_type", (scaling or params).get("type"))
    if kind not in _ROPE_OK:
        raise GGUFExportError(
            f"rope scaling {kind!r} (Llama-3-style frequency factors or context extension) is not written by this "
            f"exporter: llama.cpp would run the model with plain rope and different logits; supported: none, "
            f"'default', 'linear'")
    if kind == "linear":
        return theta, {"type": "linear", "factor": float((scaling or params)["factor"])}
    return theta, None


def layer_widths(cfg: dict) -> list[dict]:
    """Per-layer widths of a checkpoint config: ``num_attention_heads``, ``num_key_value_heads``,
    ``intermediate_size`` of each decoder layer (``pruned_layer_shapes`` when present, else the config's)."""
    from .checkpoint import LAYER_SHAPES_KEY

    shapes = cfg.get(LAYER_SHAPES_KEY)
    if shapes:
        return [{k: int(s[k]) for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")}
                for s in shapes]
    nq = int(cfg["num_attention_heads"])
    nkv = int(cfg.get("num_key_value_heads") or nq)
    return [{"num_attention_heads": nq, "num_key_value_heads": nkv, "intermediate_size": int(cfg["intermediate_size"])}
            for _ in range(int(cfg["num_hidden_layers"]))]


def check_exportable(ckpt_dir: str | os.PathLike) -> dict:
    """Check, before any tensor is read, that a checkpoint can be written as GGUF; return its config.

    Raises:
        FileNotFoundError: no ``config.json``.
        GGUFExportError: an architecture other than Llama (Gemma-3 named with its reason), a bitsandbytes
            checkpoint (export its unquantized parent and let llama.cpp quantize), biases, or a rope
            scaling this writer does not reproduce.
    """
    p = Path(ckpt_dir) / "config.json"
    if not p.exists():
        raise FileNotFoundError(f"{ckpt_dir} is not a checkpoint directory (no config.json)")
    cfg = json.loads(p.read_text())
    mt = cfg.get("model_type")
    if str(mt).startswith("gemma"):
        raise GGUFExportError(
            f"{ckpt_dir}: model_type {mt!r} is not exported to GGUF: Gemma-3 stores RMSNorm weights as w-1, scales "
            "its embeddings by sqrt(hidden) and alternates sliding-window layers, which this writer does not "
            "reproduce yet; exportable: llama")
    if mt != "llama":
        raise GGUFExportError(f"{ckpt_dir}: model_type {mt!r} is not exported to GGUF; exportable: llama")
    if cfg.get("quantization_config"):
        raise GGUFExportError(
            f"{ckpt_dir} is a bitsandbytes-quantized checkpoint; llama.cpp cannot read its NF4/int8 tensors. "
            "Export its unquantized parent and quantize with llama.cpp (gguf-q8_0, gguf-q4_k_m)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise GGUFExportError(f"{ckpt_dir}: attention_bias/mlp_bias are not exported (Llama checkpoints have none)")
    _rope(cfg)
    return cfg


def base_gguf(ckpt_dir: str | os.PathLike) -> Path | None:
    """The GGUF file the checkpoint's base model was imported from (the ``compression.json`` chain ends in an
    ``import`` stage whose ``source`` is an embedded model or a local ``.gguf``), or None."""
    from .checkpoint import read_compression

    comp = read_compression(ckpt_dir)
    while comp and comp.get("stage") != "import":
        comp = comp.get("parent_compression") or {}
    source = (comp or {}).get("source")
    if not source:
        return None
    try:
        from .models import resolve_source

        res = resolve_source(source)
    except Exception:  # noqa: BLE001  (a source that no longer resolves here: fall back to tokenizer.json)
        return None
    return Path(res.path) / res.gguf_file if res.gguf_file else None


# --------------------------------------------------------------------------- tensors


def permute_rotary(w, n_heads: int):
    """Rows of a q/k projection ``[n_heads * head_dim, in]`` (or a bias ``[n_heads * head_dim]``) from Hugging
    Face's half-split rotary layout to llama.cpp's adjacent-pair layout: inside each head, row ``p * d/2 + j``
    moves to ``2 * j + p``. ``n_heads`` is the tensor's own head count.

    Raises:
        GGUFExportError: rows not divisible into ``n_heads`` heads of even size.
    """
    rows = w.shape[0]
    if n_heads <= 0 or rows % n_heads or (rows // n_heads) % 2:
        raise GGUFExportError(f"cannot permute {rows} rows into {n_heads} heads of even size")
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _pad_layer(t: dict, w: dict, head_dim: int, hidden: int, i: int) -> list[str]:
    """Zero-width-safe padding of layer ``i`` (tensors ``t`` by short name, widths ``w``), in place."""
    import numpy as np

    done = []
    if w["num_attention_heads"] == 0:
        for name in ("q", "k", "v"):
            t[name] = np.zeros((head_dim, hidden), dtype=np.float32)
        t["o"] = np.zeros((hidden, head_dim), dtype=np.float32)
        w["num_attention_heads"] = w["num_key_value_heads"] = 1
        done.append(f"layer {i}: no attention head; written as 1 query and 1 key/value head with zero weights "
                    "(output 0, exactly as without attention)")
    if w["intermediate_size"] == 0:
        t["gate"] = np.zeros((1, hidden), dtype=np.float32)
        t["up"] = np.zeros((1, hidden), dtype=np.float32)
        t["down"] = np.zeros((hidden, 1), dtype=np.float32)
        w["intermediate_size"] = 1
        done.append(f"layer {i}: no MLP channel; written as 1 channel with zero weights (output 0), since "
                    "llama.cpp drops the attention output of an FFN-free layer")
    return done


_HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
             "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_GGUF_NAMES = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate", "up": "ffn_up",
               "down": "ffn_down", "attn_norm": "attn_norm", "ffn_norm": "ffn_norm"}


class _Tensors:
    """Tensors of a checkpoint by name, read one at a time (fp32 numpy) from its ``*.safetensors`` files."""

    def __init__(self, ckpt_dir: Path):
        from safetensors import safe_open

        self._files = {}
        for f in sorted(ckpt_dir.glob("*.safetensors")):
            h = safe_open(str(f), framework="pt")
            for k in h.keys():
                self._files[k] = h
        if not self._files:
            raise FileNotFoundError(f"{ckpt_dir} has no *.safetensors weights")

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def get(self, name: str):
        if name not in self._files:
            raise GGUFExportError(f"tensor {name!r} is missing from the checkpoint")
        return self._files[name].get_tensor(name).float().numpy()


# --------------------------------------------------------------------------- tokenizer


def _copy_tokenizer_from_gguf(writer, path: Path) -> str:
    """Every ``tokenizer.*`` key of the GGUF at ``path``, unchanged."""
    import gguf

    r = gguf.GGUFReader(str(path))
    n = 0
    for key, field in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), vtype)
        n += 1
    return f"{n} tokenizer keys carried from the base model's GGUF ({path.name})"


def _tokenizer_from_hf(writer, ckpt_dir: Path, vocab_size: int) -> str:
    """Tokens, merges and special tokens of a Hugging Face BPE ``tokenizer.json`` (gguf's vocabulary path).

    Raises:
        GGUFExportError: no ``tokenizer.json``, or a tokenizer model other than BPE.
    """
    import gguf

    tj = ckpt_dir / "tokenizer.json"
    if not tj.exists():
        raise GGUFExportError(f"{ckpt_dir} has no tokenizer.json and its base model was no GGUF: no tokenizer to write")
    model = json.loads(tj.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE":
        raise GGUFExportError(f"{ckpt_dir}: tokenizer model {model.get('type')!r} is not written (BPE only)")
    vocab = gguf.vocab.BpeVocab(ckpt_dir)
    tokens, types = [], []
    for text, _score, ttype in vocab.all_tokens():
        tokens.append(text)
        types.append(int(ttype))
    if len(tokens) > vocab_size:
        raise GGUFExportError(f"{ckpt_dir}: tokenizer has {len(tokens)} tokens, more than vocab_size {vocab_size}")
    for i in range(len(tokens), vocab_size):  # embedding rows without a token (padded vocabularies)
        tokens.append(f"[PAD{i}]")
        types.append(int(gguf.TokenType.UNUSED))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(ckpt_dir, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise GGUFExportError(f"{ckpt_dir}: the BPE tokenizer has no merges; llama.cpp refuses a 'gpt2' vocabulary "
                              "without them (and GGUF cannot hold an empty list)")
    special.add_to_gguf(writer)
    return (f"{len(tokens)} BPE tokens (padded to vocab_size) from tokenizer.json (gguf.vocab.BpeVocab), merges and special tokens "
            "(gguf.SpecialVocab); pre-tokenizer 'default'")


# --------------------------------------------------------------------------- export


def export_gguf(ckpt_dir: str | os.PathLike, out_path: str | os.PathLike, *, dtype: str = "f32",
                tokenizer_gguf: str | os.PathLike | None = None) -> dict:
    """Write the checkpoint at ``ckpt_dir`` as a GGUF file ``out_path`` (see the module doc for the layout).

    Args:
        dtype: ``"f32"`` (every tensor float32) or ``"f16"`` (2-D weights float16, norms float32).
        tokenizer_gguf: a GGUF whose ``tokenizer.*`` keys to carry; default: the base model's GGUF
            (:func:`base_gguf`), else the checkpoint's ``tokenizer.json``.

    Returns:
        the export record: ``architecture``, ``file_type``, ``layers`` (per-layer widths as written),
        ``uniform``, ``head_dim``, ``hidden_size``, ``paddings`` (zero-width layers written padded),
        ``tied_embeddings``, ``tokenizer``, ``rope``, ``tensors`` (count) and ``bytes``.

    Raises:
        GGUFExportError: see :func:`check_exportable`; an unknown ``dtype``; tensors whose shapes contradict
            the config's widths.
        FileNotFoundError: no checkpoint at ``ckpt_dir``.
    """
    import gguf
    import numpy as np

    if dtype not in ("f32", "f16"):
        raise GGUFExportError(f"GGUF export dtype {dtype!r} is not one of f32, f16 (quantize with quantize_gguf)")
    ckpt_dir = Path(ckpt_dir)
    cfg = check_exportable(ckpt_dir)
    theta, scaling = _rope(cfg)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // int(cfg["num_attention_heads"]))
    widths = layer_widths(cfg)
    tensors = _Tensors(ckpt_dir)

    # tensors first (padding may change widths), then metadata
    layer_tensors = []
    paddings: list[str] = []
    for i, w in enumerate(widths):
        t = {}
        for short, hf in _HF_NAMES.items():
            t[short] = tensors.get(f"model.layers.{i}.{hf}.weight")
        expect = {"q": (w["num_attention_heads"] * head_dim, hidden), "k": (w["num_key_value_heads"] * head_dim, hidden),
                  "v": (w["num_key_value_heads"] * head_dim, hidden), "o": (hidden, w["num_attention_heads"] * head_dim),
                  "gate": (w["intermediate_size"], hidden), "up": (w["intermediate_size"], hidden),
                  "down": (hidden, w["intermediate_size"])}
        for short, shape in expect.items():
            if tuple(t[short].shape) != shape:
                raise GGUFExportError(f"layer {i} {_HF_NAMES[short]}: shape {tuple(t[short].shape)} does not match "
                                      f"the config's widths {w} (expected {shape})")
        if (w["num_attention_heads"] == 0) != (w["num_key_value_heads"] == 0):
            raise GGUFExportError(f"layer {i}: {w['num_attention_heads']} query heads and {w['num_key_value_heads']} "
                                  "key/value heads; a layer has both or neither")
        w = dict(w)
        paddings += _pad_layer(t, w, head_dim, hidden, i)
        t["q"] = permute_rotary(t["q"], w["num_attention_heads"])
        t["k"] = permute_rotary(t["k"], w["num_key_value_heads"])
        layer_tensors.append((w, t))
    written = [w for w, _ in layer_tensors]
    uniform = all(w == written[0] for w in written)
    arch = "llama" if uniform else "deci"
    ftype = gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch, use_temp_file=True)
    writer.add_type("model")
    writer.add_name(str(cfg.get("_name_or_path") or ckpt_dir.name))
    writer.add_context_length(int(cfg.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(len(written))
    if uniform:
        writer.add_feed_forward_length(written[0]["intermediate_size"])
        writer.add_head_count(written[0]["num_attention_heads"])
        writer.add_head_count_kv(written[0]["num_key_value_heads"])
    else:
        writer.add_feed_forward_length([w["intermediate_size"] for w in written])
        writer.add_head_count([w["num_attention_heads"] for w in written])
        writer.add_head_count_kv([w["num_key_value_heads"] for w in written])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    if scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    vocab = int(cfg["vocab_size"])
    writer.add_vocab_size(vocab)
    writer.add_file_type(int(ftype))
    tok_src = Path(tokenizer_gguf) if tokenizer_gguf else base_gguf(ckpt_dir)
    tokenizer = (_copy_tokenizer_from_gguf(writer, tok_src) if tok_src else _tokenizer_from_hf(writer, ckpt_dir, vocab))

    def put(name: str, a):
        a = np.ascontiguousarray(a)
        if dtype == "f16" and a.ndim == 2:
            a = a.astype(np.float16)
        else:
            a = a.astype(np.float32)
        writer.add_tensor(name, a)

    emb = tensors.get("model.embed_tokens.weight")
    if emb.shape != (vocab, hidden):
        raise GGUFExportError(f"embed_tokens {emb.shape} does not match vocab_size {vocab} x hidden {hidden}")
    put("token_embd.weight", emb)
    del emb
    tied = bool(cfg.get("tie_word_embeddings", False)) or "lm_head.weight" not in tensors
    if not tied:
        put("output.weight", tensors.get("lm_head.weight"))
    put("output_norm.weight", tensors.get("model.norm.weight"))
    for i, (w, t) in enumerate(layer_tensors):
        for short in ("attn_norm", "q", "k", "v", "o", "ffn_norm", "gate", "up", "down"):
            put(f"blk.{i}.{_GGUF_NAMES[short]}.weight", t[short])
        layer_tensors[i] = (w, None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out_path)
    return {
        "architecture": arch,
        "file_type": ftype.name,
        "uniform": uniform,
        "layers": written,
        "head_dim": head_dim,
        "hidden_size": hidden,
        "vocab_size": vocab,
        "paddings": paddings,
        "tied_embeddings": tied,
        "tokenizer": tokenizer,
        "rope": {"freq_base": theta, "dimension_count": head_dim, "scaling": scaling},
        "bytes": out_path.stat().st_size,
    }


# --------------------------------------------------------------------------- llama.cpp's quantizer


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, file_type: str, *, threads: int = 0) -> None:
    """Quantize the GGUF ``src`` into ``dst`` with llama.cpp's own quantizer (``llama_model_quantize``).

    Args:
        file_type: a :class:`gguf.LlamaFileType` name, e.g. ``"MOSTLY_Q8_0"``, ``"MOSTLY_Q4_K_M"``.
        threads: quantizer threads (0: llama.cpp's default, the hardware's).

    Raises:
        GGUFExportError: unknown file type.
        RuntimeError: llama.cpp returned an error, or llama-cpp-python is missing.
    """
    import gguf

    try:
        ft = gguf.LlamaFileType[file_type]
    except KeyError:
        raise GGUFExportError(f"llama.cpp file type {file_type!r} unknown; e.g. MOSTLY_Q8_0, MOSTLY_Q4_K_M") from None
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - set-up installs it
        raise RuntimeError("llama-cpp-python is not installed (make setup builds it from source)") from e
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ft)
    params.nthread = int(threads)
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({src} -> {file_type}) failed with code {rc}")
    os.replace(tmp, dst)


def tensor_types(path: str | os.PathLike, file_type: str | None = None) -> dict:
    """What each tensor of a GGUF file is stored as, and which fell back from the file type's main type.

    Args:
        file_type: the requested :class:`gguf.LlamaFileType` name; None reads the file's own
            ``general.file_type``.

    Returns:
        ``{"file_type", "main_type", "tensors": {name: {"type", "shape", "row_length"}}, "type_counts",
        "fallbacks": [{"tensor", "type", "row_length", "block"}], "fallback_count", "weights_quantizable"}``;
        a fallback is a 2-D weight whose row length is not a multiple of the main type's block size, so
        llama.cpp stored it as another type.
    """
    import gguf

    r = gguf.GGUFReader(str(path))
    if file_type is None:
        f = r.fields.get("general.file_type")
        file_type = gguf.LlamaFileType(int(f.contents())).name if f is not None else None
    main = _MAIN_TYPE.get(file_type)
    block = _BLOCK.get(main) if main else None
    out, counts, fallbacks = {}, {}, []
    for t in r.tensors:
        tname = gguf.GGMLQuantizationType(int(t.tensor_type)).name
        shape = [int(x) for x in t.shape]  # GGUF order: row length first
        out[t.name] = {"type": tname, "shape": shape, "row_length": shape[0]}
        counts[tname] = counts.get(tname, 0) + 1
        if block and len(shape) == 2 and shape[0] % block:
            fallbacks.append({"tensor": t.name, "type": tname, "row_length": shape[0], "block": block})
    weights = [n for n, v in out.items() if len(v["shape"]) == 2]
    return {"file_type": file_type, "main_type": main, "tensors": out, "type_counts": counts,
            "fallbacks": fallbacks, "fallback_count": len(fallbacks),
            "weights_quantizable": (len(weights) - len(fallbacks)) if block else None, "weights": len(weights)}


def export_artifact(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, scheme: str, *,
                    threads: int = 0) -> dict:
    """The ``quantize`` stage of a ``gguf-*`` scheme: ``out_dir`` gets :data:`GGUF_FILE` (f32/f16 written by
    :func:`export_gguf`; Q8_0/Q4_K_M made from the f32 export by llama.cpp's quantizer), the tokenizer files
    of ``ckpt_dir`` (the evaluations tokenize with them, as for the PyTorch checkpoint) and
    :data:`GGUF_RECORD`, and ``compression.json`` (stage ``quantize``, its ``quantization.scheme`` the GGUF
    scheme). The folder is written atomically.

    Returns:
        the record (export record + ``scheme``, ``tensor_types`` of the written file).

    Raises:
        GGUFExportError: unknown scheme, or see :func:`export_gguf`.
    """
    import shutil
    import time

    from .checkpoint import provenance, write_compression
    from .io import atomic_dir, write_json_atomic

    if scheme not in GGUF_SCHEMES:
        raise GGUFExportError(f"unknown GGUF scheme {scheme!r}; valid: {', '.join(GGUF_SCHEMES)}")
    check_exportable(ckpt_dir)
    ft = GGUF_SCHEMES[scheme]
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        if ft in ("ALL_F32", "MOSTLY_F16"):
            rec = export_gguf(ckpt_dir, tmp / GGUF_FILE, dtype="f32" if ft == "ALL_F32" else "f16")
        else:
            src = tmp / "f32.gguf"
            rec = export_gguf(ckpt_dir, src, dtype="f32")
            quantize_gguf(src, tmp / GGUF_FILE, ft, threads=threads)
            src.unlink()
            rec["file_type"] = ft
            rec["quantized_by"] = "llama.cpp llama_model_quantize (llama-cpp-python) from the f32 export"
        for f in Path(ckpt_dir).iterdir():
            if f.name.startswith(("tokenizer", "special_tokens_map", "vocab", "merges", "chat_template")):
                shutil.copy2(f, tmp / f.name)
        rec["bytes"] = (tmp / GGUF_FILE).stat().st_size
        rec["scheme"] = scheme
        rec["tensor_types"] = tensor_types(tmp / GGUF_FILE, ft)
        write_json_atomic(tmp / GGUF_RECORD, rec)
        write_compression(tmp, provenance(
            "quantize", str(ckpt_dir),
            quantization={"scheme": scheme, "runtime": "llama.cpp", "format": "gguf", "file_type": ft,
                          "architecture": rec["architecture"], "fallback_count": rec["tensor_types"]["fallback_count"],
                          "type_counts": rec["tensor_types"]["type_counts"]},
            wall_seconds=time.perf_counter() - t0))
    return rec
