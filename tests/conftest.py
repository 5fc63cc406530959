"""Shared fixtures: tiny random Llama models and a tiny word-level tokenizer (no downloads)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WIKITEXT_DIR = SHARED / "data" / "wikitext-2-raw"

needs_shared = pytest.mark.skipif(not WIKITEXT_DIR.exists(), reason="../shared/data is absent")


def tiny_llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=True,
                bos_token_id=1, eos_token_id=2, pad_token_id=2)
    base.update(kw)
    return LlamaConfig(**base)


def tiny_llama(seed: int = 0, **kw):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**kw))
    model.eval()
    return model


def tiny_tokenizer(vocab_size: int = 256):
    """A word-level fast tokenizer over a made-up vocabulary of ``vocab_size`` entries."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, vocab_size):
        vocab[f"w{i}"] = i
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


@pytest.fixture
def model():
    return tiny_llama()


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A saved tiny Llama checkpoint directory (HF format + compression.json)."""
    from llm_compression.models import save_checkpoint

    d = tmp_path / "tiny"
    save_checkpoint(tiny_llama(), tiny_tokenizer(), d, {"stage": "test"})
    return d
