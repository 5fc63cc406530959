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


def make_byte_tokenizer():
    """PreTrainedTokenizerFast with 256 byte tokens and no merges, plus <s> (BOS) and </s> (EOS).

    Encoding text without special tokens gives exactly ``len(text.encode("utf-8"))`` tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    return tok


@pytest.fixture(scope="session")
def byte_tokenizer():
    return make_byte_tokenizer()


def make_tiny_model(vocab_size, seed=0, model_type="llama"):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=256,
                      bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1)
    model = AutoModelForCausalLM.from_config(cfg)
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


@pytest.fixture(scope="session")
def tiny_model(byte_tokenizer):
    return make_tiny_model(len(byte_tokenizer))
