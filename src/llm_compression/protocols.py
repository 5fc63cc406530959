"""Named perplexity protocols ("presets"), so a number can be compared with a paper's.

A protocol fixes, per dataset, the split, how rows are joined into one stream, the window length,
and any sampling of the stream. The metrics JSON records the preset name and every resolved field;
the aggregate table keeps presets in separate columns.

=============  =========  =====================================================================
preset         dataset    protocol
=============  =========  =====================================================================
sparsegpt      ptb        test split, sentences joined with ``" "``; windows of ``seqlen``
               wikitext2  test split, every hub row (blank rows included) joined with ``"\\n\\n"``
               c4         validation shard 0, first 1,100 documents joined with ``" "``, the first
                          ``256 * seqlen`` tokens -> 256 windows (SparseGPT/Wanda ``get_c4``)
llm-pruner     ptb        **validation** split, sentences joined with ``"\\n\\n"``; 128-token windows
               wikitext2  test split, hub rows joined with ``"\\n\\n"``; 128-token windows
               c4         not defined by LLM-Pruner (its C4 loader is commented out): the sparsegpt
                          C4 sampling with 128-token windows, and the protocol says so
custom         any        split / join / seqlen / last-window rule as configured
=============  =========  =====================================================================

Common to all: non-overlapping windows, a trailing partial window dropped (custom may keep it),
``perplexity = exp(sum NLL / scored tokens)`` with the exact count of scored tokens (SparseGPT
multiplies a per-window mean by ``seqlen`` and LLM-Pruner averages per-token losses; for equal
windows all three are the same number). The ``sparsegpt`` window is the model's configured context
(``config.max_position_embeddings``, as ``model.seqlen`` in the SparseGPT code) unless a ``seqlen`` is
given. Sources: Frantar & Alistarh 2023 (SparseGPT) Sec. 4 and ``datautils.py``; Ma et al. 2023
(LLM-Pruner) ``LLMPruner/datasets/ppl_dataset.py`` and ``LLMPruner/evaluator/ppl.py``.

Token counts with the SmolLM2 tokenizer (stream without special tokens; windows at 512 / 128):

==========================  =====================================  =========  ==========
split                       join                                   tokens     windows
==========================  =====================================  =========  ==========
PTB test                    mikolov-lines (project default)        101,691    198 / 794
PTB test                    space (sparsegpt)                      97,930     191 / 765
PTB valid                   blank-line (llm-pruner)                93,459     182 / 730
WikiText-2 test             nonblank-rows-blank-line (default)     301,948    589 / 2,358
WikiText-2 test             hub-rows, reconstructed from the       304,927    595 / 2,382
                            shared file (4,303 rows)
==========================  =====================================  =========  ==========

The hub's WikiText-2 test split has 4,358 rows, 1,467 of them blank; the shared file has the 2,891
non-blank ones, and the reconstruction (a blank row before and after each heading) restores 1,412,
so the reconstructed hub join lacks ~55 ``"\n\n"`` separators (well under 0.1% of the tokens). A raw
file that keeps its blank lines gives the hub rows exactly.

BOS: the reference codes tokenize the whole stream with the tokenizer defaults (LLaMA's adds one BOS
at the start of the stream, not per window). Here the stream is tokenized without special tokens and
BOS is put in front of every window only for models that need it (Gemma), see ``bos`` in
:func:`llm_compression.evaluate.evaluate_perplexity`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .options.dtypes import COMPUTE_DTYPES, check_compute_dtype

PRESETS = ("sparsegpt", "llm-pruner", "custom")
#: SparseGPT's C4 evaluation: documents joined and windows kept
C4_DOCUMENTS = 1100
C4_WINDOWS = 256
LLM_PRUNER_SEQLEN = 128

_PRESET_DATA = {
    "sparsegpt": {
        "ptb": {"split": "test", "join": "space"},
        "wikitext2": {"split": "test", "join": "hub-rows"},
        "c4": {"split": "validation", "join": "space", "documents": C4_DOCUMENTS, "max_windows": C4_WINDOWS},
    },
    "llm-pruner": {
        "ptb": {"split": "valid", "join": "blank-line"},
        "wikitext2": {"split": "test", "join": "hub-rows"},
        "c4": {"split": "validation", "join": "space", "documents": C4_DOCUMENTS, "max_windows": C4_WINDOWS,
               "note": "C4 is not evaluated by LLM-Pruner; SparseGPT's C4 sampling with 128-token windows"},
    },
}
_REFERENCE = {
    "sparsegpt": "SparseGPT (Frantar & Alistarh 2023) datautils.py / llama_eval",
    "llm-pruner": "LLM-Pruner (Ma et al. 2023) LLMPruner/evaluator/ppl.py PPLMetric",
    "custom": "project setting (not a published protocol)",
}
_DEFAULT_SPLIT = {"ptb": "test", "wikitext2": "test", "c4": "validation"}
_SPLIT_CANON = {"validation": "valid"}


class ProtocolError(ValueError):
    """A preset name, or a setting that contradicts the preset."""


@dataclass(frozen=True)
class PerplexityProtocol:
    """A resolved perplexity protocol for one dataset.

    ``seqlen`` None means "the model's configured context length" (resolved at evaluation time).
    ``max_windows`` keeps only the first n windows (C4 under SparseGPT: 256).
    """

    preset: str
    dataset: str
    split: str
    join: str | None
    seqlen: int | None
    documents: int | None = None
    max_windows: int | None = None
    last_window: str = "drop"
    reference: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _same_split(a: str, b: str) -> bool:
    return _SPLIT_CANON.get(a, a) == _SPLIT_CANON.get(b, b)


def resolve_protocol(preset: str, dataset: str, *, seqlen: int | None = None, split: str | None = None,
                     join: str | None = None, documents: int | None = None,
                     last_window: str = "drop") -> PerplexityProtocol:
    """The protocol of ``preset`` for ``dataset``.

    Args:
        preset: one of :data:`PRESETS`.
        dataset: ``ptb``, ``wikitext2`` or ``c4`` (``custom`` accepts any corpus of ``data.CORPORA``).
        seqlen: window length; for ``sparsegpt`` and ``custom`` None means the model's context length;
            ``llm-pruner`` always uses 128 and ignores it.
        split, join, documents: fixed by the presets (giving a different value raises); free for custom.
        last_window: ``drop`` for the presets; ``custom`` may ``keep`` a trailing partial window.

    Raises:
        ProtocolError: unknown preset or dataset, or a split/join/documents/last_window that
            contradicts the preset (the message names the preset's value).
    """
    if preset not in PRESETS:
        raise ProtocolError(f"unknown perplexity preset {preset!r}; valid: {', '.join(PRESETS)}")
    if seqlen is not None and seqlen < 2:
        raise ProtocolError(f"seqlen {seqlen} must be >= 2")
    if preset == "custom":
        from .data import CORPORA

        if dataset not in CORPORA:
            raise ProtocolError(f"unknown dataset {dataset!r}; valid: {', '.join(CORPORA)}")
        if last_window not in ("drop", "keep"):
            raise ProtocolError(f"last_window {last_window!r} must be 'drop' or 'keep'")
        return PerplexityProtocol(preset, dataset, split or _DEFAULT_SPLIT.get(dataset, "test"), join, seqlen,
                                  documents, None, last_window, _REFERENCE[preset])
    table = _PRESET_DATA[preset]
    if dataset not in table:
        raise ProtocolError(f"preset {preset!r} defines no protocol for dataset {dataset!r}; "
                            f"valid: {', '.join(table)} (use preset 'custom' for others)")
    d = table[dataset]
    for name, given, fixed in (("split", split, d["split"]), ("join", join, d["join"]),
                               ("documents", documents, d.get("documents"))):
        if given is not None and not (_same_split(given, fixed) if name == "split" else given == fixed):
            raise ProtocolError(f"dataset {dataset!r}: {name} {given!r} contradicts preset {preset!r}, which uses "
                                f"{fixed!r}; leave {name} unset, or use preset 'custom'")
    if last_window != "drop":
        raise ProtocolError(f"preset {preset!r} drops the trailing partial window; last_window {last_window!r} "
                            "needs preset 'custom'")
    window = LLM_PRUNER_SEQLEN if preset == "llm-pruner" else seqlen
    return PerplexityProtocol(preset, dataset, d["split"], d["join"], window, d.get("documents"),
                              d.get("max_windows"), "drop", _REFERENCE[preset], d.get("note", ""))


#: compute dtypes of a perplexity evaluation (``evaluation.perplexity.dtype``): the forward runs under
#: ``torch.autocast`` in this dtype (weights stay as loaded); log-softmax and the NLL sum are fp32
EVAL_DTYPES = COMPUTE_DTYPES


def check_eval_dtype(dtype: str, device) -> str:
    """Check the compute dtype of a perplexity evaluation on ``device`` (``"cpu"``, ``"cuda"``,
    ``"cuda:0"`` or a ``torch.device``), before any heavy work; returns ``dtype``.

    Raises:
        ProtocolError: ``dtype`` not one of :data:`EVAL_DTYPES`, or ``float16`` on a CPU
            (:func:`llm_compression.options.dtypes.check_compute_dtype`).
    """
    return check_compute_dtype(dtype, device, purpose="evaluation", error=ProtocolError)


def model_context_length(model) -> int:
    """The context length a model is configured for (``max_position_embeddings``).

    Raises:
        ProtocolError: the config has no ``max_position_embeddings``.
    """
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None)
    if not n:
        raise ProtocolError("the model config has no max_position_embeddings; give seqlen explicitly")
    return int(n)


def expected_windows(stream_tokens: int, seqlen: int, *, max_windows: int | None = None,
                     last_window: str = "drop") -> int:
    """Number of windows a protocol evaluates on a stream of ``stream_tokens`` tokens (documented counts).

    ``floor(N / seqlen)`` (+1 for a kept partial window of >= 2 tokens), at most ``max_windows``.
    """
    n = stream_tokens // seqlen
    if last_window == "keep" and stream_tokens - n * seqlen >= 2:
        n += 1
    return min(n, max_windows) if max_windows is not None else n
