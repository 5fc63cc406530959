"""Planning-time checks of a config against itself, the file system and the model's ``config.json``.

Each function checks one kind of bad value and raises :class:`ConfigError` (re-exported by
:mod:`llm_compression.config`, which validates the whole config)
naming the value, where it is in the config and what would be valid. The module imports neither
torch nor transformers (only :func:`check_duplicate_artifacts` of a structured entry reaches them,
through :func:`llm_compression.planning.entry_methods`): the model is known from its ``config.json``
(a JSON read) or a GGUF metadata header, so the checks run while Snakemake plans the DAG, before any
job. The model checks take plain numbers, so a job can run the same check at its start when the
model was not known at planning (a hub model before its import).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .options.pruning import layerwise_calibrated, parse_nm

#: bytes per activation value held by the layer-by-layer calibration driver (fp32)
ACTIVATION_BYTES = 4
#: methods calibrated block by block (:func:`llm_compression.prune.calibration.sequential_prune`)


class ConfigError(ValueError):
    """The configuration is malformed or names something that does not exist."""


def _error(msg: str) -> ConfigError:
    return ConfigError(msg)


def check_results_dir(results: str, base_dir: str | os.PathLike = ".") -> None:
    """``results:`` must be a folder that exists or can be created: no existing file on its path.

    Raises:
        ConfigError: ``results`` (or one of its parent components) is an existing non-directory.
    """
    p = Path(base_dir) / os.path.expanduser(results)
    for q in [p, *p.parents]:
        if q.exists():
            if not q.is_dir():
                what = "is an existing file" if q == p else f"lies under {str(q)!r}, an existing file"
                raise _error(f"results: {results!r} {what}; give a folder (an existing directory or a new path)")
            return


def check_ratios(cfg: dict) -> None:
    """Ratios that name no pruning of their own.

    ``0`` prunes nothing, so its variant would be a full copy of the dense model under another name
    (``grid.dense: true`` already measures it). An N:M level fixes the sparsity at ``N/M`` and ignores
    the ratio, so only ``ratios: [N/M]`` (the default) names it; two ratios would be the same pruning
    under two names.

    Raises:
        ConfigError: ``grid.pruning[i].ratios[j]`` is 0, or an N:M entry lists a ratio other than N/M.
    """
    for i, entry in enumerate(cfg["grid"]["pruning"]):
        ratios = entry.get("ratios", [])
        for j, r in enumerate(ratios):
            if float(r) == 0.0:
                raise _error(
                    f"grid.pruning[{i}].ratios[{j}]: 0 prunes nothing; its variant would be a full copy of the "
                    "dense model (grid.dense: true already measures that). Use ratios in (0, 1)"
                )
        level = entry.get("level", "unstructured")
        if ":" in level:
            n, m = parse_nm(level)
            if [float(r) for r in ratios] != [n / m]:
                raise _error(
                    f"grid.pruning[{i}].ratios: {list(ratios)} with level {level!r}: an N:M level prunes exactly "
                    f"N of every M weights (sparsity {n}/{m} = {n / m:g}) and ignores the ratio, so other ratios "
                    f"would be the same pruning under other names; omit ratios (or write [{n / m:g}])"
                )


def check_duplicate_artifacts(cfg: dict) -> None:
    """Two grid items that would denote the same artifact (same path) are refused, naming both.

    Ratios are compared by their canonical name (:func:`~llm_compression.variants.format_ratio`,
    e.g. ``0.3333333`` and ``1/3`` both ``0.333333``), importances by their canonical name
    (``taylor`` = ``element1``); repeats, healing names and quantization schemes by value. Two
    entries with the same method and level but different options are refused by
    :func:`~llm_compression.config.validate_config`; with the same options, their ratios x repeats are
    checked here like those of one entry.

    Raises:
        ConfigError: with both locations and the shared name.
    """
    from .planning import entry_methods
    from .variants import Pruning

    seen: dict[str, str] = {}

    def claim(name: str, where: str) -> None:
        if name in seen:
            raise _error(f"{seen[name]} and {where} denote the same artifact {name!r}; keep one of them")
        seen[name] = where

    for i, entry in enumerate(cfg["grid"]["pruning"]):
        imps = entry.get("importance")
        if isinstance(imps, list):
            seen_imp: dict[str, int] = {}
            for k, imp in enumerate(imps):
                m = entry_methods({**entry, "importance": imp})[0]
                if m in seen_imp:
                    raise _error(f"grid.pruning[{i}].importance[{seen_imp[m]}] ({imps[seen_imp[m]]!r}) and "
                                 f"grid.pruning[{i}].importance[{k}] ({imp!r}) are the same criterion {m!r}; keep one")
                seen_imp[m] = k
        for j, r in enumerate(entry.get("ratios", [])):
            for k, rep in enumerate(entry.get("repeats", [1])):
                for m in entry_methods(entry):
                    seg = Pruning(m, entry.get("level", "unstructured"), float(r), int(rep)).segment
                    claim(seg, f"grid.pruning[{i}].ratios[{j}] ({r!r}) x repeats[{k}] ({rep!r})")
    for key in ("healing", "quantization", "dense_quantization"):
        names: dict[str, int] = {}
        for j, name in enumerate(cfg["grid"].get(key, [])):
            if name in names:
                raise _error(f"grid.{key}[{names[name]}] and grid.{key}[{j}] are both {name!r}; keep one")
            names[name] = j
    for i, entry in enumerate(cfg["grid"]["pruning"]):
        for key in ("healing", "quantization"):
            names = {}
            for j, name in enumerate(entry.get(key, [])):
                if name in names:
                    raise _error(f"grid.pruning[{i}].{key}[{names[name]}] and [{j}] are both {name!r}; keep one")
                names[name] = j


def model_config_path(cfg: dict, base_dir: str | os.PathLike = ".") -> Path | None:
    """The file that describes the configured model without loading it: the imported base checkpoint's
    ``config.json`` (``{results}/{model}/base/config.json``) when it exists, else that of a local Hugging
    Face model directory given as ``model.source``, else the GGUF file of an embedded or local GGUF
    source (its metadata header); None when none is at hand (a hub model before its import)."""
    from .variants import base_dir as model_base_dir

    base = Path(base_dir)
    candidates = [base / cfg["results"] / model_base_dir(cfg["model"]["name"]) / "config.json"]
    src = cfg["model"]["source"]
    if isinstance(src, str) and not src.startswith("embedded:"):
        candidates.append(base / os.path.expanduser(src) / "config.json")
    for c in candidates:
        if c.is_file():
            return c
    if isinstance(src, str) and (src.startswith("embedded:") or src.endswith(".gguf")):
        from .models import ModelSourceError, resolve_source

        try:
            res = resolve_source(src if src.startswith("embedded:") else str(base / os.path.expanduser(src)))
        except ModelSourceError:
            return None
        if res.gguf_file:
            g = Path(res.path) / res.gguf_file
            return g if g.is_file() else None
    return None


def read_model_config(path: str | os.PathLike) -> dict:
    """A model's ``config.json`` as a dict (a ``.gguf`` file: :func:`read_gguf_config`); for multimodal
    configs the ``text_config`` entries are merged in (the language model's depth and context are what
    the checks need)."""
    if str(path).endswith(".gguf"):
        return read_gguf_config(path)
    d = json.loads(Path(path).read_text())
    text = d.get("text_config")
    return {**text, **{k: v for k, v in d.items() if k != "text_config"}} if isinstance(text, dict) else d


#: GGUF metadata keys (after ``<architecture>.``) -> the config.json names transformers gives them
_GGUF_KEYS = {"block_count": "num_hidden_layers", "context_length": "max_position_embeddings",
              "embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
              "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
              "attention.key_length": "head_dim"}


def read_gguf_config(path: str | os.PathLike) -> dict:
    """Depth, context and widths of a GGUF model from its header (GGUF v2/v3 key-value section and tensor
    infos, read without the tensors): ``num_hidden_layers``, ``max_position_embeddings``, ``hidden_size``,
    ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` as transformers maps
    ``<arch>.block_count``, ``.context_length``, ``.embedding_length``, ``.feed_forward_length``,
    ``.attention.head_count``, ``.attention.head_count_kv``, ``.attention.key_length``; ``vocab_size`` from the
    ``token_embd.weight`` shape and ``tie_word_embeddings`` (no ``output.weight`` tensor) for the memory plan.

    Raises:
        ValueError: not a GGUF v2/v3 file.
    """
    import struct

    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    with open(path, "rb") as fh:
        def read(fmt):
            n = struct.calcsize(fmt)
            return struct.unpack(fmt, fh.read(n))[0]

        def string():
            return fh.read(read("<Q")).decode("utf-8", "replace")

        def value(t):
            if t in scalar:
                return read(scalar[t])
            if t == 8:
                return string()
            if t == 9:
                item, count = read("<I"), read("<Q")
                if item in scalar:  # skip numeric arrays (token scores, types) without decoding them
                    fh.seek(struct.calcsize(scalar[item]) * count, 1)
                    return None
                return [value(item) for _ in range(count)]
            raise ValueError(f"{path}: unknown GGUF value type {t}")

        if fh.read(4) != b"GGUF" or read("<I") not in (2, 3):
            raise ValueError(f"{path} is not a GGUF v2/v3 file")
        n_tensors = read("<Q")
        meta = {}
        for _ in range(read("<Q")):
            key = string()
            v = value(read("<I"))
            if not key.startswith("tokenizer."):
                meta[key] = v
        shapes = {}
        for _ in range(n_tensors):  # tensor infos: name, dims, type, offset
            name = string()
            shapes[name] = [read("<Q") for _ in range(read("<I"))]
            read("<I")
            read("<Q")
    arch = meta.get("general.architecture")
    out = {name: int(meta[f"{arch}.{k}"]) for k, name in _GGUF_KEYS.items() if f"{arch}.{k}" in meta}
    if len(shapes.get("token_embd.weight", [])) == 2:
        out["vocab_size"] = int(shapes["token_embd.weight"][1])  # GGUF lists dims innermost first
        out["tie_word_embeddings"] = "output.weight" not in shapes
    if arch:
        out["model_type"] = {"gemma3": "gemma3_text"}.get(arch, arch)  # as transformers names the config
    return out


def check_context_length(seqlen: int | None, context: int | None, where: str, source: str) -> None:
    """A token window must fit the model's context (``max_position_embeddings``).

    Raises:
        ConfigError: ``seqlen > context``.
    """
    if seqlen is not None and context and int(seqlen) > int(context):
        raise _error(f"{where}: {seqlen} tokens exceed the model's context of {context} tokens "
                     f"(max_position_embeddings in {source}); valid: 2..{context}")


def check_layer_range(layer_range, n_layers: int | None, where: str, source: str) -> None:
    """``layer_range: [start, end)`` (negatives count from the end) must select decoder layers of the model.

    Raises:
        ConfigError: empty range, or a bound beyond the model's ``n_layers`` layers.
    """
    if layer_range is None or not n_layers:
        return
    start, end = (int(x) + n_layers if int(x) < 0 else int(x) for x in layer_range)
    if not 0 <= start < end <= n_layers:
        raise _error(f"{where}: {list(layer_range)} is empty or outside the model's {n_layers} decoder layers "
                     f"(num_hidden_layers in {source}); valid: 0 <= start < end <= {n_layers}, "
                     "negatives counting from the end")


def calibration_bytes(samples: int, seqlen: int, hidden_size: int) -> int:
    """Bytes of activations the layer-by-layer calibration driver holds at once: the inputs and the
    outputs of one decoder block for every calibration window, ``2 * samples * seqlen * hidden * 4``
    (fp32; :func:`llm_compression.prune.calibration.capture_block_inputs`)."""
    return 2 * int(samples) * int(seqlen) * int(hidden_size) * ACTIVATION_BYTES


def check_calibration_budget(samples: int, seqlen: int, hidden_size: int | None, mem_mb: int | None,
                             where: str, source: str) -> None:
    """Calibration windows whose activations cannot fit the prune job's memory are refused.

    Raises:
        ConfigError: :func:`calibration_bytes` exceeds ``mem_mb`` (the prune stage's memory,
            config ``resources``); the message gives the arithmetic and the largest ``samples`` that fits.
    """
    if not hidden_size or not mem_mb:
        return
    need = calibration_bytes(samples, seqlen, hidden_size)
    have = int(mem_mb) * 1024**2
    if need > have:
        most = have // calibration_bytes(1, seqlen, hidden_size)
        raise _error(
            f"{where}: {samples} windows of {seqlen} tokens need 2 x {samples} x {seqlen} x {hidden_size} (hidden size, "
            f"{source}) x {ACTIVATION_BYTES} B = {need / 1e9:,.1f} GB of calibration activations, more than the prune "
            f"job's memory of {int(mem_mb):,} MB (resources.stages.prune.mem_mb); valid: 1..{most} windows of "
            f"{seqlen} tokens (the SparseGPT/Wanda reference uses 128 x 2048)"
        )


def check_against_model(cfg: dict, model_cfg: dict, source: str, prune_mem_mb: int | None = None) -> None:
    """Every config value bounded by the model: token windows against its context
    (``evaluation.perplexity.seqlen`` of presets sparsegpt/custom, ``calibration.seqlen`` and the entries'
    overrides, ``evaluation.memory.seqlen``, the latency prompt plus new tokens, each healing recipe's
    ``seqlen``), ``layer_range`` against its depth, the calibration windows of Wanda/SparseGPT against the prune
    job's memory, and GGUF quantizations against the model's architecture (:func:`check_gguf_exportable`).

    Raises:
        ConfigError: the first bad value, named with the model's figure and ``source`` (its config.json).
    """
    from .options.pruning import STRUCTURED_METHOD as STRUCTURED_CONFIG_METHOD

    context = model_cfg.get("max_position_embeddings")
    n_layers = model_cfg.get("num_hidden_layers")
    hidden = model_cfg.get("hidden_size")
    ppl = cfg["evaluation"]["perplexity"]
    if set(ppl["presets"]) & {"sparsegpt", "custom"}:
        check_context_length(ppl["seqlen"], context, "evaluation.perplexity.seqlen", source)
    ev = cfg["evaluation"]
    if ev.get("memory", {}).get("enabled"):
        check_context_length(ev["memory"].get("seqlen"), context, "evaluation.memory.seqlen", source)
    lat = ev.get("latency", {})
    if lat.get("enabled") and lat.get("prompt_tokens") is not None:
        check_context_length(lat["prompt_tokens"] + lat.get("new_tokens", 0), context,
                             "evaluation.latency.prompt_tokens + new_tokens", source)
    from .planning import healing_names

    used = set(healing_names(cfg))
    for name, recipe in (cfg.get("healing") or {}).items():
        if name in used and isinstance(recipe, dict) and recipe.get("seqlen") is not None:
            check_context_length(recipe["seqlen"], context, f"healing.{name}.seqlen", source)
    cal = cfg["calibration"]
    for i, entry in enumerate(cfg["grid"]["pruning"]):
        if entry["method"] not in layerwise_calibrated():
            continue
        own = entry.get("calibration") or {}
        merged = {**cal, **own}
        where = f"grid.pruning[{i}].calibration" if own else "calibration"
        check_context_length(merged["seqlen"], context, f"{where}.seqlen", source)
        check_calibration_budget(merged["samples"], merged["seqlen"], hidden, prune_mem_mb, f"{where}.samples", source)
    for i, entry in enumerate(cfg["grid"]["pruning"]):
        if entry["method"] == STRUCTURED_CONFIG_METHOD and "layer_range" in entry:
            check_layer_range(entry["layer_range"], n_layers, f"grid.pruning[{i}].layer_range", source)
    check_gguf_exportable(cfg, model_cfg.get("model_type"), source)


def check_gguf_exportable(cfg: dict, model_type: str | None, source: str) -> None:
    """GGUF quantizations (``gguf-*``) need a model the GGUF writer exports (Llama family).

    Raises:
        ConfigError: a ``gguf-*`` scheme in the grid for another ``model_type``, naming both.
    """
    from .options.quantization import GGUF_SCHEMES
    from .planning import quantization_names

    asked = [q for q in quantization_names(cfg) if q in GGUF_SCHEMES]
    if asked and model_type is not None and model_type != "llama":
        raise _error(f"grid quantization {', '.join(asked)}: the GGUF export writes Llama-family models only; "
                     f"{source} is model_type {model_type!r} (Gemma-3's w-1 norms, scaled embeddings and sliding "
                     "windows are not written yet). Use none, nf4, nf4-dq, fp4 or int8 for it")


def check_pruning_job(prune_params: dict, checkpoint_dir: str | os.PathLike, mem_mb: int | None = None) -> None:
    """The model-bounded checks of one prune job (calibration window and memory, ``layer_range``),
    run at the job's start against its input checkpoint's ``config.json``, before loading the model or
    drawing calibration windows: for models whose ``config.json`` was not readable at planning (an
    embedded GGUF model before its import).

    Args:
        prune_params: the rule's ``params.prune`` (``method``, ``layer_range``, ``calibration``, ...).
        checkpoint_dir: the checkpoint the job prunes.
        mem_mb: the job's memory (``resources.mem_mb``), or None to skip the memory bound.

    Raises:
        ConfigError: as :func:`check_against_model`.
    """
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        return
    m = read_model_config(path)
    cal = prune_params.get("calibration")
    if cal and prune_params.get("method") in layerwise_calibrated():
        check_context_length(cal["seqlen"], m.get("max_position_embeddings"), "calibration.seqlen", str(path))
        check_calibration_budget(cal["samples"], cal["seqlen"], m.get("hidden_size"), mem_mb,
                                 "calibration.samples", str(path))
    if prune_params.get("layer_range") is not None:
        check_layer_range(prune_params["layer_range"], m.get("num_hidden_layers"), "layer_range", str(path))


def check_calibration_corpus(samples: int, seqlen: int, corpus_bytes: int, where: str, source: str) -> None:
    """More calibration windows than the corpus has distinct starting positions are refused.

    Every tokenizer the project uses (byte-level BPE, SentencePiece with byte fallback, word level)
    spends at least one byte of UTF-8 text per token, so a text of ``corpus_bytes`` bytes has at most
    ``corpus_bytes + 1`` tokens (one BOS) and at most ``corpus_bytes - seqlen + 2`` distinct windows
    of ``seqlen`` tokens: a bound known before tokenizing.

    Raises:
        ConfigError: ``samples`` above that bound (or a corpus shorter than one window).
    """
    most = max(int(corpus_bytes) - int(seqlen) + 2, 0)
    if int(samples) > most:
        raise _error(f"{where}: {samples} windows of {seqlen} tokens from {source} ({int(corpus_bytes):,} bytes of text, "
                     f"so at most {most:,} distinct windows); valid: 1..{most:,}")


def check_evaluation_job(evaluation: dict, checkpoint_dir: str | os.PathLike) -> None:
    """The context bound of one evaluation job (its ``params.evaluation``), at the job's start against
    the evaluated checkpoint's ``config.json``, before loading it: for models whose ``config.json``
    was not readable at planning.

    Raises:
        ConfigError: as :func:`check_context_length`.
    """
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        return
    context = read_model_config(path).get("max_position_embeddings")
    kind = evaluation.get("kind")
    if kind == "perplexity" and evaluation.get("preset") in ("sparsegpt", "custom"):
        check_context_length(evaluation.get("seqlen"), context, "evaluation.perplexity.seqlen", str(path))
    elif kind == "memory":
        check_context_length(evaluation.get("seqlen"), context, "evaluation.memory.seqlen", str(path))
    elif kind == "latency" and evaluation.get("prompt_tokens") is not None:
        check_context_length(evaluation["prompt_tokens"] + evaluation.get("new_tokens", 0), context,
                             "evaluation.latency.prompt_tokens + new_tokens", str(path))
