"""Shared fixtures: a byte-level tokenizer (1 token per UTF-8 byte, so token counts are known) and a
tiny random Llama model over its vocabulary."""
import pytest


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


@pytest.fixture(scope="session")
def tiny_model(byte_tokenizer):
    return make_tiny_model(len(byte_tokenizer))
