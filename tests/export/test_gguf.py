"""GGUF export for llama.cpp on tiny models: logits in llama.cpp equal PyTorch's, for uniform widths (``llama``),
per-layer widths (``deci``), a removed MLP and a head-less first layer (padded exactly), a channel-pruned hidden
size (explicit head size); refusals; llama.cpp's quantizer and the per-tensor type record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_llama

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by make setup")

from llm_compression.checkpoint import LAYER_SHAPES_KEY, load_checkpoint, save_checkpoint  # noqa: E402
from llm_compression.evaluate.llamacpp import LlamaCppLM, load_llama  # noqa: E402
from llm_compression.gguf_export import (GGUFExportError, check_exportable, export_artifact, export_gguf,  # noqa: E402
                                         permute_rotary, tensor_types)

VOCAB = 320  # the BPE tokenizer below: 256 bytes, merges, <s> and </s>
IDS = [1] + list(range(40, 100, 3)) + [200, 7, 9, 255, 33, 300, 310]


def _bpe_tokenizer():
    """A byte-level BPE tokenizer trained here on a few sentences (real merges, as a Hub tokenizer has)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["the cat sat on the mat", "a capital of france is paris", "to make a cup of tea first boil water"] * 20
    tk.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def _save(model, path):
    tok = _bpe_tokenizer()
    assert len(tok) <= VOCAB
    save_checkpoint(model, tok, path, {"stage": "test"})
    return path


def _torch_logits(ckpt):
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0].numpy()


def _llamacpp_logits(gguf_path):
    llm = load_llama(gguf_path, n_ctx=64, threads=1, logits_all=True)
    try:
        return LlamaCppLM(llm)(torch.tensor([IDS])).logits[0].numpy()
    finally:
        llm.close()


def _assert_parity(ckpt, tmp_path, name="m.gguf", reference=None):
    rec = export_gguf(ckpt, tmp_path / name, dtype="f32")
    ref = _torch_logits(reference or ckpt)
    got = _llamacpp_logits(tmp_path / name)
    assert got.shape == ref.shape
    # float tolerance: llama.cpp keeps its KV cache in f16 by default (a wrong layout is off by O(scale))
    scale = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) <= 1e-3 * max(scale, 1.0), (float(np.abs(got - ref).max()), scale)
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    return rec


def _slice_layers(model, keep):
    """Cut each layer to ``keep[i] = (query heads per kv head, kv heads, mlp channels)`` (first ones kept) and
    record the per-layer widths in the config, as structured pruning leaves a model."""
    from torch import nn

    cfg = model.config
    d = cfg.head_dim
    shapes = []
    for blk, (per_kv, nkv, inter) in zip(model.model.layers, keep):
        att, mlp = blk.self_attn, blk.mlp
        rep = cfg.num_attention_heads // cfg.num_key_value_heads
        q_heads = [g * rep + j for g in range(nkv) for j in range(per_kv)]
        q_rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in q_heads]) if q_heads else torch.zeros(0, dtype=torch.long)
        kv_rows = torch.arange(nkv * d)

        def lin(w):
            m = nn.Linear(w.shape[1], w.shape[0], bias=False)
            m.weight = nn.Parameter(w.clone())
            return m

        att.q_proj = lin(att.q_proj.weight[q_rows])
        att.k_proj = lin(att.k_proj.weight[kv_rows])
        att.v_proj = lin(att.v_proj.weight[kv_rows])
        att.o_proj = lin(att.o_proj.weight[:, q_rows])
        mlp.gate_proj = lin(mlp.gate_proj.weight[:inter])
        mlp.up_proj = lin(mlp.up_proj.weight[:inter])
        mlp.down_proj = lin(mlp.down_proj.weight[:, :inter])
        att.num_key_value_groups = per_kv
        shapes.append({"num_attention_heads": per_kv * nkv, "num_key_value_heads": nkv, "intermediate_size": inter})
    setattr(cfg, LAYER_SHAPES_KEY, shapes)
    return model


def test_permute_rotary_moves_half_split_pairs_to_adjacent_rows():
    w = np.arange(2 * 4).reshape(8, 1)  # 2 heads of 4 rows: halves (0,1 | 2,3)
    got = permute_rotary(w, 2)[:, 0].tolist()
    assert got == [0, 2, 1, 3, 4, 6, 5, 7]
    with pytest.raises(GGUFExportError, match="heads of even size"):
        permute_rotary(np.zeros((6, 2)), 2)


def test_uniform_model_exports_as_llama_with_equal_logits(tmp_path):
    ckpt = _save(tiny_llama(vocab_size=VOCAB, num_hidden_layers=3), tmp_path / "dense")
    rec = _assert_parity(ckpt, tmp_path)
    assert rec["architecture"] == "llama" and rec["uniform"] and rec["tied_embeddings"]
    assert rec["paddings"] == [] and "BPE" in rec["tokenizer"]


def test_untied_head_is_written_as_output_weight(tmp_path):
    ckpt = _save(tiny_llama(vocab_size=VOCAB, tie_word_embeddings=False), tmp_path / "untied")
    rec = _assert_parity(ckpt, tmp_path)
    assert not rec["tied_embeddings"]
    assert "output.weight" in tensor_types(tmp_path / "m.gguf")["tensors"]


def test_per_layer_widths_export_as_deci_with_equal_logits(tmp_path):
    model = _slice_layers(tiny_llama(vocab_size=VOCAB, num_hidden_layers=3, seed=1),
                          [(4, 2, 128), (2, 2, 48), (1, 1, 96)])
    ckpt = _save(model, tmp_path / "block")
    rec = _assert_parity(ckpt, tmp_path)
    assert rec["architecture"] == "deci" and not rec["uniform"]
    assert [w["num_attention_heads"] for w in rec["layers"]] == [8, 4, 1]
    assert [w["num_key_value_heads"] for w in rec["layers"]] == [2, 2, 1]
    assert [w["intermediate_size"] for w in rec["layers"]] == [128, 48, 96]


def test_channel_pruned_hidden_size_needs_and_gets_an_explicit_head_size(tmp_path):
    # hidden 48 with 8 heads of 8: llama.cpp would derive a head size of 48 / 8 = 6 without key_length
    ckpt = _save(tiny_llama(vocab_size=VOCAB, hidden_size=48, head_dim=8), tmp_path / "channel")
    rec = _assert_parity(ckpt, tmp_path)
    assert rec["architecture"] == "llama" and rec["head_dim"] == 8 and rec["hidden_size"] == 48


def _zero_width_checkpoints(tmp_path):
    """A 3-layer model whose layer 0 has no attention head and layer 1 no MLP channel, saved twice: with
    width 0 (what is exported) and with one all-zero head/channel (the PyTorch reference, same function)."""
    from safetensors.torch import load_file, save_file

    model = _slice_layers(tiny_llama(vocab_size=VOCAB, num_hidden_layers=3, seed=2),
                          [(1, 1, 128), (4, 2, 1), (4, 2, 128)])
    att0, mlp1 = model.model.layers[0].self_attn, model.model.layers[1].mlp
    for lin in (att0.q_proj, att0.k_proj, att0.v_proj, att0.o_proj, mlp1.gate_proj, mlp1.up_proj, mlp1.down_proj):
        lin.weight.data.zero_()
    ref = _save(model, tmp_path / "padded")
    zero = tmp_path / "zero"
    import shutil

    shutil.copytree(ref, zero)
    cfg = json.loads((zero / "config.json").read_text())
    cfg[LAYER_SHAPES_KEY][0].update(num_attention_heads=0, num_key_value_heads=0)
    cfg[LAYER_SHAPES_KEY][1]["intermediate_size"] = 0
    (zero / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(zero / "model.safetensors"))
    for k in list(state):
        if k.startswith("model.layers.0.self_attn.") :
            state[k] = state[k][:0] if not k.endswith("o_proj.weight") else state[k][:, :0]
        if k.startswith("model.layers.1.mlp."):
            state[k] = state[k][:0] if not k.endswith("down_proj.weight") else state[k][:, :0]
    save_file({k: v.contiguous() for k, v in state.items()}, str(zero / "model.safetensors"), metadata={"format": "pt"})
    return zero, ref


def test_removed_mlp_and_headless_first_layer_are_padded_exactly(tmp_path):
    zero, ref = _zero_width_checkpoints(tmp_path)
    rec = _assert_parity(zero, tmp_path, reference=ref)
    assert rec["architecture"] == "deci"
    assert len(rec["paddings"]) == 2
    assert "layer 0: no attention head" in rec["paddings"][0] and "layer 1: no MLP channel" in rec["paddings"][1]
    assert rec["layers"][0]["num_attention_heads"] == 1 and rec["layers"][1]["intermediate_size"] == 1


def test_refusals_name_the_reason(tmp_path):
    ckpt = _save(tiny_llama(vocab_size=VOCAB), tmp_path / "m")
    cfg_path = ckpt / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for change, match in (({"model_type": "gemma3_text"}, "Gemma-3"),
                          ({"model_type": "gpt2"}, "exportable: llama"),
                          ({"quantization_config": {"quant_method": "bitsandbytes"}}, "unquantized parent"),
                          ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "'llama3'"),
                          ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "'yarn'")):
        cfg_path.write_text(json.dumps({**cfg, **change}))
        with pytest.raises(GGUFExportError, match=match):
            check_exportable(ckpt)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(GGUFExportError, match="dtype"):
        export_gguf(ckpt, tmp_path / "x.gguf", dtype="q4")


def test_llamacpp_quantization_records_effective_types_and_fallbacks(tmp_path):
    # hidden 64: every row length is 64 or 128, a multiple of Q8_0's 32 but not of the k-quants' 256
    ckpt = _save(tiny_llama(vocab_size=VOCAB), tmp_path / "m")
    q8 = export_artifact(ckpt, tmp_path / "q8", "gguf-q8_0", threads=1)
    tt = q8["tensor_types"]
    assert tt["main_type"] == "Q8_0" and tt["fallback_count"] == 0
    assert all(v["type"] == "Q8_0" for n, v in tt["tensors"].items() if len(v["shape"]) == 2)
    assert all(v["type"] == "F32" for n, v in tt["tensors"].items() if len(v["shape"]) == 1)
    q4 = export_artifact(ckpt, tmp_path / "q4", "gguf-q4_k_m", threads=1)["tensor_types"]
    assert q4["main_type"] == "Q4_K"
    assert q4["fallback_count"] == q4["weights"] > 0  # no row is 256-aligned
    assert all(f["type"] != "Q4_K" for f in q4["fallbacks"])
    # tokenizer files travel with the GGUF (evaluations tokenize with them)
    assert (tmp_path / "q4" / "tokenizer.json").exists() and (tmp_path / "q4" / "gguf.json").exists()
    # a quantized file still runs and agrees roughly with the f32 logits
    ref = _torch_logits(ckpt)
    got = _llamacpp_logits(tmp_path / "q8" / "model.gguf")
    assert float(np.abs(got - ref).max()) < 0.1 * float(np.abs(ref).max()) + 0.05


def test_llamacpp_evaluations_follow_the_pytorch_protocols(tmp_path):
    """Perplexity (same windows and scoring), cost (same parameter and MAC counts), latency and memory records of a
    GGUF artifact, through the workflow's dispatcher, against the checkpoint's PyTorch records."""
    from llm_compression.evaluate import evaluate_artifact

    model = _slice_layers(tiny_llama(vocab_size=VOCAB, num_hidden_layers=3, seed=3), [(4, 2, 128), (2, 2, 64), (1, 2, 96)])
    ckpt = _save(model, tmp_path / "block")
    art = tmp_path / "gguf-f32"
    export_artifact(ckpt, art, "gguf-f32", threads=1)
    ppl = dict(dataset="ptb", preset="sparsegpt", seqlen=64, max_tokens=512, batch_size=2)
    pt = evaluate_artifact(ckpt, "perplexity", **ppl)
    lc = evaluate_artifact(art, "perplexity", job_threads=1, **ppl)
    assert lc["runtime"]["engine"] == "llama.cpp" and lc["runtime"]["threads"] == 1
    for k in ("windows", "scored_tokens", "seqlen", "stream_tokens", "split_tokens", "join"):
        assert lc["protocol"][k] == pt["protocol"][k], k
    assert abs(lc["metrics"]["perplexity"] / pt["metrics"]["perplexity"] - 1) < 1e-3
    c_pt = evaluate_artifact(ckpt, "cost", seqlen=64)["metrics"]
    c_lc = evaluate_artifact(art, "cost", seqlen=64, job_threads=1)["metrics"]
    for k in ("parameters", "nonzero_parameters", "macs", "prunable_weights"):
        assert c_lc[k] == c_pt[k], (k, c_lc[k], c_pt[k])
    assert c_lc["gguf_architecture"] == "deci" and c_lc["disk_bytes"] == (art / "model.gguf").stat().st_size
    lat = evaluate_artifact(art, "latency", prompt_tokens=16, new_tokens=4, repeats=2, warmup=1, job_threads=1)
    m = lat["metrics"]
    assert m["decode_tokens_per_second_median"] > 0 and len(m["decode_tokens_per_second_repeats"]) == 2
    assert lat["protocol"]["threads"] == 1 and lat["protocol"]["quantization"] == "gguf-f32"
    mem = evaluate_artifact(art, "memory", seqlen=32, job_threads=1)
    assert mem["runtime"]["engine"] == "llama.cpp"
    assert mem["metrics"]["peak_memory_bytes"] >= mem["metrics"]["rss_after_load_bytes"] > 0
    with pytest.raises(ValueError, match="zeroshot.*not one of perplexity, cost, memory, latency"):
        evaluate_artifact(art, "zeroshot")


def test_greedy_generation_in_llamacpp_equals_transformers(tmp_path):
    from llm_compression.evaluate.generate import generate_greedy
    from llm_compression.evaluate.llamacpp import generate_gguf

    ckpt = _save(tiny_llama(vocab_size=VOCAB, seed=4), tmp_path / "m")
    art = tmp_path / "gguf-f32"
    export_artifact(ckpt, art, "gguf-f32", threads=1)
    model, tok = load_checkpoint(ckpt)
    prompts = ["the cat sat", "a capital of"]
    pt = generate_greedy(model, tok, prompts, max_new_tokens=8)
    lc = generate_gguf(art, tok, prompts, max_new_tokens=8, threads=1)
    assert [g["completion"] for g in lc] == [g["completion"] for g in pt]
    assert [g["new_tokens"] for g in lc] == [g["new_tokens"] for g in pt]


def test_model_cards_say_which_runtimes_load_the_export(tmp_path):
    from huggingface_hub import ModelCard

    from llm_compression.export import export_checkpoint
    from llm_compression.variants import Pruning, Variant

    model = _slice_layers(tiny_llama(vocab_size=VOCAB, num_hidden_layers=2), [(4, 2, 128), (2, 2, 64)])
    ckpt = _save(model, tmp_path / "block")
    art = tmp_path / "gguf-q8_0"
    export_artifact(ckpt, art, "gguf-q8_0", threads=1)
    v = Variant(Pruning("llmpruner-l2", "block", 0.25, 1), "none", "gguf-q8_0")
    export_checkpoint(art, tmp_path / "export", metrics_files=[], model="tiny", variant=v.row(), base={})
    card = ModelCard.load(tmp_path / "export" / "README.md")
    assert card.data.library_name == "gguf" and {"gguf", "llama.cpp", "q8_0"} <= set(card.data.tags)
    assert "| llama.cpp | yes (`deci` architecture, per-layer widths, MOSTLY_Q8_0)" in card.text
    assert "| transformers `from_pretrained` | no |" in card.text and "Llama(model_path=" in card.text
    assert (tmp_path / "export" / "model.gguf").exists() and "**export** GGUF gguf-q8_0" in card.text
    v0 = Variant(Pruning("llmpruner-l2", "block", 0.25, 1))
    export_checkpoint(ckpt, tmp_path / "export0", metrics_files=[], model="tiny", variant=v0.row(), base={})
    text = (tmp_path / "export0" / "README.md").read_text()
    assert "| transformers `from_pretrained` | no (per-layer widths) |" in text
    assert "| llm-compression `load_checkpoint` | yes |" in text and "| llama.cpp | after conversion" in text
