"""Hub-ready exports: a compressed checkpoint plus a Hugging Face model card, in one folder.

``results/<model>/export/<pruning>/<healing>/<quant>/`` (:func:`llm_compression.variants.export_dir`) holds

- the checkpoint exactly as the workflow measured it (``config.json``, ``*.safetensors``, tokenizer files,
  ``compression.json``; ``adapter/`` when healing kept one),
- ``metrics/<evaluation>.json``: every metrics record of that variant, value and protocol,
- ``README.md``: the model card. Its YAML front matter follows the Hugging Face model-card metadata
  (``base_model``, ``library_name: transformers``, ``license`` of the base model, ``tags`` for the method,
  the sparsity and the quantization, ``pipeline_tag``, and a ``model-index`` with the perplexity and
  zero-shot results); its body gives the provenance (the ``compression.json`` chain, base model first),
  the measured metrics with their protocols, and how to load and evaluate the folder.

Nothing is uploaded: publishing is ``hf upload <repo> <folder>`` (huggingface_hub's CLI), by the user.
This module imports neither torch nor transformers (the workflow calls :func:`select_export_variants`
while validating the config).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterable

from .io import atomic_dir, read_json, write_text_atomic
from .variants import Variant

CARD_FILE = "README.md"
METRICS_DIR = "metrics"
#: the Hub id and license of each embedded model (the GGUF packages carry the original weights' license)
EMBEDDED_BASES = {
    "smollm2-135m": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
    "gemma3-270m": {"base_model": "google/gemma-3-270m", "license": "gemma"},
}
#: Hub dataset ids of the evaluation corpora and zero-shot tasks, for the model-index (name, type, config)
_DATASETS = {
    "ptb": ("Penn Treebank", "ptb_text_only", None),
    "wikitext2": ("WikiText-2", "wikitext", "wikitext-2-raw-v1"),
    "c4": ("C4", "allenai/c4", "en"),
    "boolq": ("BoolQ", "google/boolq", None),
    "piqa": ("PIQA", "ybisk/piqa", None),
    "hellaswag": ("HellaSwag", "Rowan/hellaswag", None),
    "winogrande": ("WinoGrande", "allenai/winogrande", "winogrande_xl"),
    "arc_easy": ("ARC-Easy", "allenai/ai2_arc", "ARC-Easy"),
    "arc_challenge": ("ARC-Challenge", "allenai/ai2_arc", "ARC-Challenge"),
    "openbookqa": ("OpenBookQA", "allenai/openbookqa", "main"),
}
#: metrics of cost-type evaluations shown in the card (every value stays in metrics/*.json)
_HEADLINE = {
    "cost": ("parameters", "nonzero_parameters", "sparsity", "disk_bytes", "gmacs", "linear_bits_per_weight"),
    "memory": ("peak_memory_bytes",),
    "latency": ("prefill_seconds_median", "decode_tokens_per_second_median"),
}
_HF_CACHE_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/")


class ExportError(ValueError):
    """An export that cannot be made as asked (unknown variant, missing checkpoint or metrics)."""


def select_export_variants(spec, variants: Iterable[Variant]) -> list[Variant]:
    """The variants named by the config's ``report.export``, in grid order.

    Args:
        spec: ``"all"``, or a list of variant labels as in the summary table (``dense``,
            ``wanda_unstructured_0.5_x1``, ``wanda_unstructured_0.5_x1+nf4-dq``, ``..._x1+lora``); ``[]`` = none.
        variants: the grid (:func:`llm_compression.config.expand_grid`).

    Raises:
        ExportError: a label that is not a variant of the grid (the valid labels are listed), or a spec that is
            neither ``"all"`` nor a list.
    """
    variants = list(variants)
    if spec == "all":
        return variants
    if not isinstance(spec, (list, tuple)):
        raise ExportError(f"report.export: {spec!r} must be 'all' or a list of variant labels")
    by_label = {v.label: v for v in variants}
    unknown = [s for s in spec if s not in by_label]
    if unknown:
        raise ExportError(f"report.export: {unknown} {'is not a variant' if len(unknown) == 1 else 'are not variants'}"
                          f" of the grid; valid labels: {', '.join(by_label)} (or 'all')")
    wanted = set(spec)
    return [v for v in variants if v.label in wanted]


def _front_matter(text: str) -> dict:
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    import yaml

    data = yaml.safe_load(m[1])
    return data if isinstance(data, dict) else {}


def base_model_info(source: str) -> dict:
    """``{"base_model": hub id or None, "license": id or None}`` of a model source (see
    :mod:`llm_compression.models`), without network access.

    Embedded models: from :data:`EMBEDDED_BASES`. A hub id: the id itself, and the license from its model
    card when that is in the local Hugging Face cache. A local folder: ``base_model`` / ``license`` of its
    ``README.md`` front matter, the hub id when the folder is a Hugging Face cache snapshot
    (``models--org--name/snapshots/...``). Unknown values stay None (the card then says so).
    """
    info = {"base_model": None, "license": None}
    if source.startswith("embedded:"):
        return {**info, **EMBEDDED_BASES.get(source.split(":", 1)[1], {})}
    path = Path(os.path.expanduser(source))
    if path.exists():
        folder = path if path.is_dir() else path.parent
        m = _HF_CACHE_SNAPSHOT.search(str(folder.resolve()) + "/")
        if m:
            info["base_model"] = f"{m['org']}/{m['name']}"
        card = folder / CARD_FILE
        if card.is_file():
            meta = _front_matter(card.read_text(errors="replace"))
            base = meta.get("base_model")
            info["base_model"] = (base[0] if isinstance(base, list) and base else base) or info["base_model"]
            info["license"] = meta.get("license") or info["license"]
        return info
    info["base_model"] = source  # a hub id (validated by the config check)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, CARD_FILE)
        if isinstance(cached, str):
            info["license"] = _front_matter(Path(cached).read_text(errors="replace")).get("license")
    except Exception:  # noqa: BLE001 - the cache is optional; the license then stays unknown
        pass
    return info


def provenance_chain(compression: dict) -> list[dict]:
    """The ``compression.json`` records from the imported base model to this checkpoint (oldest first),
    following the nested ``parent_compression`` entries."""
    chain, rec = [], compression
    while rec:
        chain.append(rec)
        rec = rec.get("parent_compression") or {}
    return chain[::-1]


def _fmt(value: float, metric: str) -> str:
    if metric.endswith("_bytes"):
        return f"{value / 1e6:,.1f} MB"
    if metric in ("parameters", "nonzero_parameters"):
        return f"{value / 1e6:,.2f} M"
    if metric == "sparsity":
        return f"{100 * value:.2f}%"
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.1f}"


#: metric name endings that are parts of another row (its interval, its sample size, its standard error)
_PART_OF_ANOTHER_ROW = ("_stderr", "_ci95_low", "_ci95_high", "samples")


def metric_rows(records: list[dict]) -> list[dict]:
    """Rows of the card's results table: every perplexity and zero-shot value, each with its 95% interval and
    sample size where the record has them (``n``, ``ci95_low``, ``ci95_high`` of
    :func:`llm_compression.report.table.rows_from_record`: windows for a perplexity, documents for an accuracy),
    and the headline values of cost, memory and latency; each with its protocol."""
    from .report.table import rows_from_record

    rows = []
    for rec in sorted(records, key=lambda r: r["evaluation"]):
        kind = rec["evaluation"]
        for row in rows_from_record(rec):
            if kind in _HEADLINE and row["metric"] not in _HEADLINE[kind]:
                continue
            if row["metric"].endswith(_PART_OF_ANOTHER_ROW):
                continue
            rows.append(row)
    return rows


def _with_interval(text: str, row: dict) -> str:
    """``value [low, high] (n = N units)`` when the row carries a 95% interval, else the value alone."""
    lo, hi = row.get("ci95_low"), row.get("ci95_high")
    if lo is None or hi is None or lo != lo or hi != hi:  # absent or NaN
        return text
    n = row.get("n")
    unit = "documents" if row.get("evaluation", "").startswith("zeroshot") else "windows"
    size = f" (n = {int(n)} {unit})" if n is not None and n == n else ""
    return f"{text} [{_fmt(lo, row['metric'])}, {_fmt(hi, row['metric'])}]{size}"


def _tags(chain: list[dict], variant: dict, sparsity: float | None) -> list[str]:
    tags = ["llm-compression", "compressed"]
    method, level = variant.get("method"), variant.get("level")
    if method and method != "dense":
        tags += ["pruned", method.split("-")[0] if method.startswith("llmpruner") else method]
        if method.startswith("llmpruner"):
            tags += ["llm-pruner", "structured-pruning", f"{level}-pruning"]
        elif level in ("2:4", "4:8"):
            tags += ["semi-structured-sparsity", f"sparsity-{level.replace(':', 'of')}"]
        else:
            tags += ["unstructured-sparsity"]
    if method and method != "dense" and sparsity is not None and sparsity >= 0.005:
        tags.append(f"sparsity-{round(100 * sparsity)}")  # measured; not for zeros NF4 rounding made
    heal = next((c.get("healing") for c in chain if c.get("stage") == "heal"), None)
    if heal:
        tags.append({"lora": "lora", "kd": "knowledge-distillation"}.get(heal.get("method"), str(heal.get("method"))))
    quant = next((c.get("quantization") for c in chain if c.get("stage") == "quantize"), None)
    if quant and quant.get("format") == "gguf":
        tags += ["gguf", "llama.cpp", str(quant.get("file_type", "")).replace("MOSTLY_", "").replace("ALL_", "").lower()]
    elif quant:
        scheme = quant.get("scheme", "")
        tags += ["bitsandbytes", "8-bit" if scheme == "int8" else "4-bit", scheme.split("-")[0]]
        if scheme.endswith("-dq"):
            tags.append("double-quantization")
    return list(dict.fromkeys(tags))


def _eval_results(rows: list[dict]):
    from huggingface_hub import EvalResult

    out = []
    for r in rows:
        if r["metric"] == "perplexity":
            mtype, mname = "perplexity", "perplexity"
        elif r["evaluation"] == "zeroshot" and r["metric"] in ("acc", "acc_norm") and r["dataset"] in _DATASETS:
            mtype, mname = r["metric"], {"acc": "accuracy", "acc_norm": "normalized accuracy"}[r["metric"]]
        else:
            continue
        name, dtype, dconfig = _DATASETS.get(r["dataset"], (r["dataset"], r["dataset"], None))
        out.append(EvalResult(task_type="text-generation", dataset_type=dtype, dataset_name=name,
                              dataset_config=dconfig, dataset_split=r["split"] or None, metric_type=mtype,
                              metric_name=f"{mname} ({r['preset']})" if r["preset"] else mname,
                              metric_value=round(float(r["value"]), 6), metric_config=r["preset"] or None))
    return out


def _step_text(rec: dict) -> str:
    stage = rec.get("stage")
    if stage == "import":
        return (f"**import** `{rec.get('source')}` ({rec.get('source_kind')}), dtype {rec.get('dtype')}"
                + (f". {rec['note']}" if rec.get("note") else ""))
    if stage == "prune":
        p = rec.get("pruning", {})
        res = rec.get("result", {})
        opts = {k: v for k, v in p.items() if k not in ("method", "level", "ratio", "repeat")}
        text = (f"**prune** {p.get('method')} at level {p.get('level')}, ratio {p.get('ratio')}, repeat "
                f"{p.get('repeat')}" + (f", options `{json.dumps(opts)}`" if opts else ""))
        if res.get("sparsity_after") is not None:
            text += f"; measured sparsity {100 * res['sparsity_after']:.2f}% of {res.get('prunable_weights'):,} prunable weights"
        cal = rec.get("calibration")
        if cal:
            text += (f"; calibration {cal.get('samples')} x {cal.get('seqlen')} tokens of {cal.get('dataset', '')}"
                     f" {cal.get('split', '')} (seed {cal.get('seed')})")
        return text
    if stage == "heal":
        h = rec.get("healing", {})
        parts = [f"{k} {h[k]}" for k in ("method", "steps", "epochs", "learning_rate", "batch_size", "seqlen")
                 if h.get(k) is not None]
        lora = h.get("lora") or {}
        if lora.get("rank") is not None:
            parts.append(f"LoRA rank {lora['rank']}, alpha {lora.get('alpha')} (merged)")
        if h.get("method") == "kd":
            parts.append(f"teacher {(h.get('kd') or {}).get('teacher')}, temperature {(h.get('kd') or {}).get('temperature')}")
        return f"**heal** `{h.get('name')}`: " + ", ".join(parts)
    if stage == "quantize" and (rec.get("quantization") or {}).get("format") == "gguf":
        q = rec["quantization"]
        return (f"**export** GGUF {q.get('scheme')} for llama.cpp ({q.get('architecture')} architecture, "
                f"{q.get('file_type')}; tensor types {q.get('type_counts')}, {q.get('fallback_count')} fallbacks)")
    if stage == "quantize":
        q = rec.get("quantization", {})
        return (f"**quantize** {q.get('scheme')} (bitsandbytes), compute dtype {q.get('compute_dtype')}, blocksize "
                f"{q.get('blocksize')}")
    return f"**{stage}**"


def runtimes_section(folder: str, *, plain_loadable: bool, quantized: bool, gguf: dict | None) -> list[str]:
    """The model card's "Runtimes" lines: which runtimes load the exported folder (transformers plain, this
    library's loader, llama.cpp) and how."""
    if gguf:
        arch = gguf.get("architecture")
        return ["| runtime | loads it | how |", "|---|---|---|",
                "| transformers `from_pretrained` | no | a GGUF file for llama.cpp; the PyTorch checkpoint it was "
                "exported from is the variant without the `gguf-*` quantization |",
                "| llm-compression `load_checkpoint` | no | as above |",
                f"| llama.cpp | yes (`{arch}` architecture{', per-layer widths' if arch == 'deci' else ''}, "
                f"{gguf.get('file_type')}) | `llama-cli -m {folder}/model.gguf`, or in Python "
                f"`llama_cpp.Llama(model_path=\"{folder}/model.gguf\")` (llama-cpp-python) |", ""]
    plain = "yes" if plain_loadable else "no (per-layer widths)"
    llama = ("no (bitsandbytes NF4/int8 tensors; export the unquantized variant with a `gguf-*` quantization)"
             if quantized else "after conversion: the `gguf-*` quantizations of the workflow write it, or "
             f"`llm_compression.gguf_export.export_gguf(\"{folder}\", \"model.gguf\")`")
    return ["| runtime | loads it | how |", "|---|---|---|",
            f"| transformers `from_pretrained` | {plain} | "
            + (f"`AutoModelForCausalLM.from_pretrained(\"{folder}\")`" if plain_loadable else "see below") + " |",
            f"| llm-compression `load_checkpoint` | yes | `load_checkpoint(\"{folder}\")` |",
            f"| llama.cpp | {llama} | |", ""]


def model_card(compression: dict, records: list[dict], *, model: str, variant: dict, base: dict,
               folder: str, plain_loadable: bool, quantized: bool, gguf: dict | None = None) -> str:
    """The model card (``README.md``) text of an exported variant.

    Args:
        compression: the checkpoint's ``compression.json``.
        records: its metrics records (``metrics/<model>/.../<evaluation>.json`` contents).
        model: the workflow's model name (``model.name``); variant: the variant's table row
            (:meth:`llm_compression.variants.Variant.row`); base: :func:`base_model_info`.
        folder: the path shown in the loading examples.
        plain_loadable: whether ``AutoModelForCausalLM.from_pretrained`` can build it (uniform layer widths).
        quantized: a bitsandbytes checkpoint (loading needs bitsandbytes).
        gguf: the ``gguf.json`` record of a GGUF artifact (a ``gguf-*`` quantization), else None.
    """
    from huggingface_hub import ModelCardData

    chain = provenance_chain(compression)
    rows = metric_rows(records)
    sparsity = next((r["value"] for r in rows if r["evaluation"] == "cost" and r["metric"] == "sparsity"), None)
    if sparsity is None:
        sparsity = next((c["result"].get("sparsity_after") for c in reversed(chain)
                         if c.get("stage") == "prune" and c.get("result")), None)
    name = f"{model}-{variant['variant'].replace('+', '-')}"
    data = ModelCardData(
        base_model=base.get("base_model"), library_name="gguf" if gguf else "transformers", license=base.get("license"),
        pipeline_tag="text-generation", tags=_tags(chain, variant, sparsity), model_name=name,
        eval_results=_eval_results(rows) or None,
    )
    lines = [f"# {name}", ""]
    base_txt = f"[`{base['base_model']}`](https://huggingface.co/{base['base_model']})" if base.get("base_model") \
        else "the base model (not a Hub model; see the provenance)"
    lines += [f"{base_txt} compressed with llm-compression — variant `{variant['variant']}`"
              f" (pruning `{variant['method']}`{' ' + variant['level'] if variant.get('level') else ''}"
              f"{', ratio ' + str(variant['ratio']) if variant['method'] != 'dense' else ''}; healing "
              f"`{variant['healing']}`; quantization `{variant['quant']}`).", ""]
    if not base.get("license"):
        lines += ["**License:** unknown to the exporter; the base model's license applies to these weights.", ""]
    lines += ["## Provenance", "",
              "Each step made the next checkpoint from the previous one (`compression.json` in this folder holds "
              "every parameter, the measured result, library versions and wall times):", ""]
    lines += [f"{i}. {_step_text(rec)}" for i, rec in enumerate(chain, 1)]
    versions = compression.get("library_versions") or {}
    if versions:
        lines += ["", "Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + "."]
    lines += ["", "## Measured results", ""]
    if rows:
        lines += ["Measured on this checkpoint by the workflow; every value with its full protocol is in "
                  "`metrics/<evaluation>.json`. Protocols differ between rows: compare a value only with values "
                  "measured under the same protocol. Brackets hold the 95% interval (perplexity: t interval over the "
                  "scored windows; accuracy: Wilson interval over the documents, combined over tasks on the "
                  "average row) with the sample it comes from.", "",
                  "| evaluation | metric | dataset | split | protocol | value | protocol details |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            val = _with_interval(_fmt(r["value"], r["metric"]), r)
            lines.append(f"| {r['evaluation']} | {r['metric']} | {r['dataset']} | {r['split']} | {r['preset']} | "
                         f"{val} | {r['protocol']} |")
        notes = [n for rec in records for n in rec.get("notes", [])]
        if notes:
            lines += ["", *[f"- {n}" for n in dict.fromkeys(notes)]]
    else:
        lines += ["No evaluation was configured for this variant."]
    lines += ["", "## Runtimes", ""] + runtimes_section(folder, plain_loadable=plain_loadable, quantized=quantized,
                                                         gguf=gguf)
    lines += ["## How to load", ""]
    if gguf:
        lines += ["```python", "from llama_cpp import Llama", "",
                  f'llm = Llama(model_path="{folder}/model.gguf")', "```", "",
                  "`gguf.json` lists the type llama.cpp stored each tensor as (row lengths that are no multiple of "
                  "a quantizer's block fall back to another type) and any zero-width layer written padded."]
    elif plain_loadable:
        lines += ["With transformers" + (" (and bitsandbytes, for the 4-bit/8-bit layers)" if quantized else "") + ":",
                  "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{folder}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{folder}")', "```", "",
                  "With llm-compression (the same weights; also routes 4-bit layers bitsandbytes' CPU kernel cannot "
                  "run to its generic path):", ""]
    else:
        lines += ["Its decoder layers have different widths (structured pruning), which "
                  "`AutoModelForCausalLM.from_pretrained` cannot build: load it with llm-compression, which resizes "
                  "every layer to its saved shape before loading the weights:", ""]
    if not gguf:
        lines += ["```python", "from llm_compression.models import load_checkpoint", "",
                  f'model, tokenizer = load_checkpoint("{folder}")', "```"]
    if plain_loadable and not gguf:
        lines += ["", "## Evaluate with lm-evaluation-harness", "",
                  "```bash", f"lm_eval --model hf --model_args pretrained={folder},dtype=float32 \\",
                  "  --tasks arc_easy,piqa --device cpu --batch_size 8", "```"]
    lines += ["", "## Limitations", ""]
    if variant["method"] != "dense" and not variant["method"].startswith("llmpruner"):
        lines.append("- Unstructured and N:M zeros are stored as dense tensors: they shrink neither the file nor "
                     "memory, and dense kernels run no faster on them.")
    lines.append("- Measured with the protocols above only; no claim beyond them.")
    lines.append("- Exported by llm-compression; nothing was uploaded. To publish: "
                 f"`hf upload <your-repo> {folder} . --exclude .snakemake_timestamp` "
                 "(Snakemake's marker of a finished folder).")
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def export_checkpoint(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, *, metrics_files: list,
                      model: str, variant: dict, base: dict) -> dict:
    """Write a hub-ready folder: the checkpoint's files, ``metrics/<evaluation>.json`` and the model card.

    Atomic (temporary folder, then rename): an interrupted export leaves nothing that looks finished.

    Args:
        ckpt_dir: the variant's checkpoint (``artifact_dir``); out_dir: the export folder.
        metrics_files: that variant's metrics JSON files (their ``variant`` must be this one).
        model, variant, base: as in :func:`model_card`.

    Returns:
        ``{"files": [...], "plain_loadable": bool, "quantized": bool, "front_matter": dict}``.

    Raises:
        ExportError: ``ckpt_dir`` has no ``config.json``, or a metrics file belongs to another variant.
    """
    from .models import needs_structured_loader, read_compression

    from .gguf_export import GGUF_RECORD, is_gguf_artifact

    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    gguf = read_json(ckpt_dir / GGUF_RECORD) if is_gguf_artifact(ckpt_dir) else None
    if gguf is None and not (ckpt_dir / "config.json").is_file():
        raise ExportError(f"{ckpt_dir} is not a checkpoint (no config.json) nor a GGUF artifact")
    records = [read_json(f) for f in metrics_files]
    for f, rec in zip(metrics_files, records):
        if rec.get("variant", {}).get("variant") != variant["variant"] or rec.get("model") != model:
            raise ExportError(f"metrics file {f} belongs to {rec.get('model')}/{rec.get('variant', {}).get('variant')}, "
                              f"not {model}/{variant['variant']}")
    compression = read_compression(ckpt_dir)
    if gguf:
        quantized, plain = True, False
    else:
        config = json.loads((ckpt_dir / "config.json").read_text())
        quantized = config.get("quantization_config") is not None
        plain = not needs_structured_loader(ckpt_dir)
    card = model_card(compression, records, model=model, variant=variant, base=base, folder=str(out_dir),
                      plain_loadable=plain, quantized=quantized, gguf=gguf)
    with atomic_dir(out_dir) as tmp:
        for item in sorted(ckpt_dir.iterdir()):
            if item.name in (CARD_FILE, METRICS_DIR) or item.name.startswith(".snakemake"):
                continue  # Snakemake's directory markers are not part of the model
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        (tmp / METRICS_DIR).mkdir()
        for f, rec in zip(metrics_files, records):
            shutil.copy2(f, tmp / METRICS_DIR / f"{rec['evaluation']}.json")
        write_text_atomic(tmp / CARD_FILE, card)
        umask = os.umask(0)
        os.umask(umask)
        for p in tmp.rglob("*"):  # a folder to share: modes as the umask allows, whatever the sources had
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return {"files": files, "plain_loadable": plain, "quantized": quantized, "front_matter": _front_matter(card)}
