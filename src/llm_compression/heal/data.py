"""Training data for healing: windows of a registered text corpus, or Alpaca-format instructions.

Two formats (recipe key ``data.format``):

- ``corpus``: a corpus of :mod:`llm_compression.data` (offline default ``lambada`` book passages,
  which is not one of the evaluation corpora) tokenized as one stream and cut into non-overlapping
  windows of ``seqlen`` tokens; every token is a target (causal LM loss on the full window).
- ``alpaca``: records with ``instruction``, optional ``input``, and ``output``, from a local JSON
  (a list) or JSONL file, or a hub dataset id (``datasets.load_dataset(id, split=split)``). Each record
  is rendered with the Alpaca prompt template (Taori et al. 2023, Stanford Alpaca) followed by the
  response and the EOS token. ``loss_on: response`` (default) takes the loss only on the response
  tokens (the prompt's labels are -100); ``loss_on: full`` on every token. Examples longer than
  ``seqlen`` are truncated; batches are right-padded, padding labels are -100 (with right padding a
  causal model's outputs at real positions do not depend on the padding, so no attention mask is needed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..data import load_text, tokenize_stream
from ..options.healing import FORMATS, LOSS_ON  # noqa: F401

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class HealDataError(ValueError):
    """Training data that cannot be loaded or does not have the expected fields."""


def corpus_windows(tokenizer, corpus: str, split: str, *, seqlen: int, path: str | None = None,
                   max_tokens: int | None = None) -> tuple[torch.Tensor, dict]:
    """Non-overlapping windows of a registered corpus -> (LongTensor ``[n_windows, seqlen]``, protocol).

    Raises:
        llm_compression.data.CorpusError: unknown corpus/split or no source.
        HealDataError: fewer tokens than one window.
    """
    text = load_text(corpus, split, path=path)
    ids = tokenize_stream(tokenizer, text.text, max_tokens=max_tokens)
    n = ids.numel() // seqlen
    if n < 1:
        raise HealDataError(f"corpus {corpus}/{split} has {ids.numel()} tokens, fewer than one window of {seqlen}")
    windows = ids[: n * seqlen].reshape(n, seqlen)
    return windows, {**text.protocol, "stream_tokens": int(ids.numel()), "windows": n, "seqlen": seqlen}


def load_alpaca_records(source: str, *, split: str = "train") -> list[dict]:
    """Read Alpaca records from a local ``.json`` (list of objects) / ``.jsonl`` file or a hub dataset id.

    Raises:
        HealDataError: missing file, unreadable JSON, or a record without ``instruction``/``output``.
    """
    p = Path(os.path.expanduser(source))
    if p.exists():
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix == ".jsonl":
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                records = json.loads(text)
        except json.JSONDecodeError as e:
            raise HealDataError(f"{p} is not valid JSON/JSONL: {e}") from None
        if not isinstance(records, list):
            raise HealDataError(f"{p} must hold a JSON list of records (or be a .jsonl file)")
    elif source.startswith(("/", ".", "~")) or source.endswith((".json", ".jsonl")):
        raise HealDataError(f"instruction data file {source!r} does not exist")
    else:
        from datasets import load_dataset

        records = list(load_dataset(source, split=split))
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "instruction" not in r or "output" not in r:
            raise HealDataError(
                f"record {i} of {source!r} lacks 'instruction'/'output' (Alpaca format: instruction, input, output)"
            )
    if not records:
        raise HealDataError(f"{source!r} holds no records")
    return records


def render_alpaca(record: dict) -> tuple[str, str]:
    """``(prompt, response)`` text of one Alpaca record (template of the module docstring)."""
    inp = (record.get("input") or "").strip()
    tmpl = PROMPT_WITH_INPUT if inp else PROMPT_NO_INPUT
    return tmpl.format(instruction=record["instruction"].strip(), input=inp), str(record["output"])


def alpaca_examples(tokenizer, records: list[dict], *, seqlen: int, loss_on: str = "response"
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Tokenize Alpaca records -> list of ``(input_ids [L], labels [L])`` with ``L <= seqlen``.

    Raises:
        ValueError: ``loss_on`` not in :data:`LOSS_ON`.
        HealDataError: no example keeps a loss-bearing token after truncation.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on {loss_on!r} must be one of {', '.join(LOSS_ON)}")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for r in records:
        prompt, response = render_alpaca(r)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + eos
        ids = torch.tensor((p_ids + r_ids)[:seqlen], dtype=torch.long)
        labels = ids.clone()
        if loss_on == "response":
            labels[: len(p_ids)] = -100
        if (labels[1:] != -100).any():
            out.append((ids, labels))
    if not out:
        raise HealDataError("no instruction example has a response token within seqlen; raise seqlen")
    return out


def batch_iter(examples, *, batch_size: int, seed: int, pad_id: int):
    """``epoch -> iterator`` of ``(input_ids, labels)`` batches ``[batch_size, L]``, shuffled per epoch
    with ``torch.Generator().manual_seed(seed + epoch)``; a trailing partial batch is dropped.

    ``examples`` is a LongTensor ``[n, seqlen]`` of windows (labels = inputs) or a list of
    ``(input_ids, labels)`` pairs of varying length (right-padded with ``pad_id`` / -100).
    """

    def epoch_batches(epoch: int):
        n = len(examples)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for b in range(n // batch_size):
            idx = order[b * batch_size : (b + 1) * batch_size]
            if isinstance(examples, torch.Tensor):
                x = examples[idx]
                yield x, x.clone()
            else:
                L = max(examples[i][0].numel() for i in idx)
                x = torch.full((len(idx), L), pad_id, dtype=torch.long)
                y = torch.full((len(idx), L), -100, dtype=torch.long)
                for j, i in enumerate(idx):
                    ids, lab = examples[i]
                    x[j, : ids.numel()] = ids
                    y[j, : lab.numel()] = lab
                yield x, y

    return epoch_batches
