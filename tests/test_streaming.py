"""Streamed evaluation (llm_compression.streaming): one decoder block on the device at a time gives the in-memory
model's logits and perplexity bit for bit, for uniform and per-layer widths, while only one block is resident."""
import pytest
import torch

from conftest import tiny_llama, tiny_tokenizer
from llm_compression.evaluate.perplexity import perplexity
from llm_compression.models import load_checkpoint, save_checkpoint
from llm_compression.streaming import StreamedCheckpoint, StreamingError, streamed_forward


def _saved(tmp_path, model, name="m"):
    out = tmp_path / name
    save_checkpoint(model, tiny_tokenizer(), out, {"stage": "test"})
    return out


def _pruned_per_layer(tmp_path):
    from llm_compression.prune.structured import prune_structured

    m = tiny_llama(0, num_hidden_layers=4)
    r = prune_structured(m, level="block", ratio=0.5, importance="l2")
    assert not r["uniform"]
    return _saved(tmp_path, m, "block")


@pytest.mark.parametrize("kind", ["uniform", "per-layer widths"])
def test_streamed_logits_and_perplexity_equal_in_memory_bit_for_bit(tmp_path, kind):
    ckpt = _saved(tmp_path, tiny_llama(0, num_hidden_layers=3)) if kind == "uniform" else _pruned_per_layer(tmp_path)
    model, _ = load_checkpoint(ckpt, tokenizer=False)
    ids = torch.randint(0, 256, (7 * 32 + 5,), generator=torch.Generator().manual_seed(1))
    sc = StreamedCheckpoint(ckpt)
    batches = [ids[:96].view(3, 32), ids[96:160].view(2, 32), ids[160:192].view(1, 32)]
    with torch.no_grad():
        expected = [model(input_ids=x, use_cache=False).logits for x in batches]
    got = list(streamed_forward(sc, batches))
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    for last_window in ("drop", "keep"):  # "keep": a shorter last window runs as its own batch
        a = perplexity(model, ids, seqlen=32, batch_size=3, last_window=last_window)
        b = perplexity(sc, ids, seqlen=32, batch_size=3, last_window=last_window)
        assert b["window_nll"] == a["window_nll"] and b["perplexity"] == a["perplexity"]
        assert b["window_tokens"] == a["window_tokens"]
    # bos_token_id too (Gemma's protocol)
    assert perplexity(sc, ids, seqlen=32, batch_size=2, bos_token_id=1)["nll_sum"] == \
        perplexity(model, ids, seqlen=32, batch_size=2, bos_token_id=1)["nll_sum"]


@pytest.mark.parametrize("tied", [False, True])
def test_only_one_block_is_resident_at_a_time(tmp_path, tied):
    """Blocks one at a time; the embeddings only for the block-0 inputs and the norm and head only after the
    blocks, unless the head is the (tied) embedding."""
    model = tiny_llama(0, num_hidden_layers=4, tie_word_embeddings=tied)
    ckpt = _saved(tmp_path, model)
    size = {n: p.numel() * 4 for n, p in model.named_parameters()}
    block_bytes = sum(v for n, v in size.items() if n.startswith("model.layers.0."))
    embedding = size["model.embed_tokens.weight"]
    head = 0 if tied else size["lm_head.weight"]
    norm = size["model.norm.weight"]
    assert StreamedCheckpoint(ckpt).resident_bytes() == embedding + head + norm  # load_outer=True: all of them
    sc = StreamedCheckpoint(ckpt, load_outer=False)
    assert sc.resident_bytes() == 0
    seen = []
    original = sc.load_block

    def spy(i):
        block = original(i)
        seen.append(sc.resident_bytes())
        return block

    sc.load_block = spy
    list(streamed_forward(sc, [torch.randint(0, 256, (2, 16))]))
    assert seen == [(embedding if tied else 0) + block_bytes] * 4
    assert sc.resident_bytes() == (embedding if tied else head) + norm
    with pytest.raises(ValueError, match="part 'head'"):
        sc.load_outer("head")


def test_refusals_name_the_reason(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        StreamedCheckpoint(tmp_path)
    ckpt = _saved(tmp_path, tiny_llama())
    sc = StreamedCheckpoint(ckpt)
    from llm_compression.protocols import ProtocolError

    with pytest.raises(ProtocolError, match="streamed evaluation runs in the weights' own dtype"):
        perplexity(sc, torch.randint(0, 256, (64,)), seqlen=32, dtype="bfloat16")
    import json

    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StreamingError, match="bitsandbytes-quantized"):
        StreamedCheckpoint(ckpt)


def test_the_evaluate_job_streams_on_request_with_the_same_record(tiny_checkpoint):
    """resources.streaming: always -> the evaluate job's perplexity is streamed: same metrics and windows."""
    from llm_compression.evaluate import evaluate_artifact

    opts = dict(dataset="ptb", preset="sparsegpt", seqlen=32, max_tokens=160, batch_size=2)
    a = evaluate_artifact(tiny_checkpoint, "perplexity", device="cpu", job_threads=1, **opts)
    b = evaluate_artifact(tiny_checkpoint, "perplexity", device="cpu", job_threads=1, streamed=True, **opts)
    assert b["metrics"] == a["metrics"] and b["windows"] == a["windows"] and b["protocol"] == a["protocol"]
    assert b["runtime"]["streamed"] is True and "streamed" not in a["runtime"]


def test_streaming_is_a_job_resource_not_a_param(tmp_path):
    """Switching resources.streaming changes no rule's params (nothing reruns); the evaluate rule gets it."""
    from llm_compression.config import validate_config
    from llm_compression.planning import Plan

    raw = {"model": {"name": "m", "source": "embedded:smollm2-135m"}, "grid": {},
           "evaluation": {"perplexity": {"datasets": {"ptb": {}}}}}
    plain = Plan(validate_config(raw, check_model=False))
    streamed = Plan(validate_config({**raw, "resources": {"streaming": "always"}}, check_model=False))
    assert plain.resources.streaming == "auto" and streamed.resources.streaming == "always"
    name = plain.evaluations[0]
    assert plain.evaluation_params(name) == streamed.evaluation_params(name)


def test_gpu_acceptance_config_validates_and_the_script_refuses_without_cuda(monkeypatch):
    """The GPU acceptance run is ready for a GPU machine: its config plans, and without CUDA the script stops
    before any work with a message saying so."""
    import importlib.util
    from pathlib import Path

    from llm_compression.config import read_config_yaml, validate_config
    from llm_compression.planning import Plan

    root = Path(__file__).resolve().parents[1]
    cfg = validate_config(read_config_yaml(root / "config" / "gpu-acceptance.yaml"), base_dir=root, check_model=False)
    plan = Plan(cfg)
    assert {v.label for v in plan.variants} >= {"dense", "dense+nf4-dq", "sparsegpt_unstructured_0.5_x1",
                                                 "llmpruner-element1_block_0.5_x1+lora+nf4-dq"}
    assert cfg["device"] == "cuda" and set(plan.evaluations) >= {"memory", "latency"}
    spec = importlib.util.spec_from_file_location("gpu_acceptance", root / "scripts" / "gpu_acceptance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="sees no CUDA GPU"):
        mod.main(["--check-only"])


@pytest.mark.parametrize("method,level,extra", [("sparsegpt", "unstructured", {}), ("sparsegpt", "2:4", {}),
                                                ("wanda", "unstructured", {}), ("magnitude", "unstructured", {}),
                                                ("magnitude", "4:8", {"scope": "row"})])
def test_streamed_pruning_equals_in_memory_bit_for_bit(tmp_path, method, level, extra):
    """One block on the device at a time: the same masks and weights as prune_model on the whole model, a
    checkpoint that loads (sharded, with an index), and the same sparsity report."""
    from llm_compression.prune import prune_model
    from llm_compression.streaming import prune_streamed

    src = _saved(tmp_path, tiny_llama(0, num_hidden_layers=3), "src")
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    model, _ = load_checkpoint(src, tokenizer=False)
    ref = prune_model(model, method=method, level=level, ratio=0.5, calib_ids=calib, batch_size=2, **extra)
    out = tmp_path / "streamed"
    res = prune_streamed(src, out, method=method, level=level, ratio=0.5, calib_ids=calib, batch_size=2, **extra)
    got, _ = load_checkpoint(out, tokenizer=False)
    want = dict(model.named_parameters())
    for name, p in got.named_parameters():
        assert torch.equal(p, want[name]), name
    assert res.sparsity_after == ref.sparsity_after and res.per_layer_sparsity == ref.per_layer_sparsity
    assert res.sparsity_before == ref.sparsity_before and res.streamed and res.provenance()["streamed"]
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(out)  # the index makes it a standard sharded checkpoint
    assert torch.equal(plain.model.layers[1].mlp.up_proj.weight, want["model.layers.1.mlp.up_proj.weight"])


def test_streamed_pruning_refuses_what_cannot_stream(tmp_path):
    from llm_compression.streaming import prune_streamed

    src = _saved(tmp_path, tiny_llama(0), "src")
    with pytest.raises(ValueError, match="scope 'global' .* cannot be streamed"):
        prune_streamed(src, tmp_path / "o1", method="magnitude", ratio=0.5, scope="global")
    for level, importance in (("block", "element1"), ("channel", "vector"), ("layer", "element1")):
        with pytest.raises(StreamingError, match=f"at level '{level}'.* the block level with l1, l2, random, "
                                                 "activation, contribution, the channel level with l1, l2, random, "
                                                 "activation and the layer level with l1, l2, random, "
                                                 "block-influence, angular stream. Prune this one in memory"):
            prune_streamed(src, tmp_path / "o2", method="llm-pruner", level=level, ratio=0.5, importance=importance,
                           calib_ids=torch.zeros(2, 8, dtype=torch.long))
    assert not (tmp_path / "o2").exists()  # refused before anything was written


@pytest.mark.parametrize("importance,extra", [("l2", {}), ("l1", {"attention": "kv_group", "aggregation": "max"}),
                                              ("random", {"seed": 3, "width_multiple": 4}),
                                              ("activation", {"batch_size": 2}),
                                              ("contribution", {"attention": "kv_group", "layer_range": [0, 3]})])
@pytest.mark.parametrize("source", ["uniform", "per-layer widths"])
def test_streamed_structured_pruning_equals_in_memory_bit_for_bit(tmp_path, importance, extra, source):
    """Block-level structured pruning one decoder block at a time (each block scored from its own weights, cut,
    written): the same kept heads and channels, tensors, config widths and report as in memory, from a dense and
    from an already pruned (per-layer widths) source; the output reloads and runs."""
    import json

    from llm_compression.checkpoint import load_checkpoint as load
    from llm_compression.prune import prune_model
    from llm_compression.streaming import prune_streamed

    src = (_saved(tmp_path, tiny_llama(0, num_hidden_layers=4), "src") if source == "uniform"
           else _pruned_per_layer(tmp_path))
    model, _ = load(src, tokenizer=False)
    if importance in ("activation", "contribution"):  # scored on the calibration set, replayed block by block
        extra = {**extra, "calib_ids": torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(5))}
    ref = prune_model(model, method="llm-pruner", level="block", ratio=0.25, importance=importance, **extra)
    a, b = tmp_path / "in-memory", tmp_path / "streamed"
    save_checkpoint(model, tiny_tokenizer(), a, {"stage": "test"})
    res = prune_streamed(src, b, method="llm-pruner", level="block", ratio=0.25, importance=importance, **extra)
    assert res.structured == ref.structured | {"seconds": res.structured["seconds"],
                                               "gradient_seconds": res.structured["gradient_seconds"]}
    assert res.structured["parameters_after"] < res.structured["parameters_before"]
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    assert cb == ca
    got, _ = load(b, tokenizer=False)
    x = torch.randint(0, 256, (1, 12))
    assert torch.equal(got(x).logits, model(x).logits)


def _tensors(ckpt):
    from safetensors.torch import load_file

    return {k: v for f in sorted(ckpt.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("kind", ["tied", "untied", "per-layer widths"])
def test_streamed_nf4_quantization_equals_in_memory_bit_for_bit(tmp_path, kind):
    """quantize_streamed (one block at a time) writes the tensors quantize_checkpoint writes, bit for bit, with the
    same quantization_config; both reload to the same logits."""
    import json

    pytest.importorskip("bitsandbytes")
    from llm_compression.quantize import quantize_checkpoint, quantize_streamed

    if kind == "per-layer widths":
        src = _pruned_per_layer(tmp_path)
    else:
        src = _saved(tmp_path, tiny_llama(0, num_hidden_layers=3, tie_word_embeddings=kind == "tied"))
    a, b = tmp_path / "in-memory", tmp_path / "streamed"
    quantize_checkpoint(src, a, scheme="nf4-dq")
    info = quantize_streamed(src, b, scheme="nf4-dq")
    assert info["quantization"]["streamed"] is True
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    qa = json.loads((a / "config.json").read_text())["quantization_config"]
    qb = json.loads((b / "config.json").read_text())["quantization_config"]
    assert qa == qb
    ids = torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    ma, _ = load_checkpoint(a, tokenizer=False)
    mb, _ = load_checkpoint(b, tokenizer=False)
    with torch.no_grad():
        assert torch.equal(ma(ids).logits, mb(ids).logits)


def test_streamed_quantization_refuses_int8(tmp_path):
    from llm_compression.quantize import quantize_streamed

    with pytest.raises(StreamingError, match="int8"):
        quantize_streamed(_saved(tmp_path, tiny_llama(0)), tmp_path / "q", scheme="int8")


@pytest.mark.parametrize("importance,extra", [("l1", {}), ("l2", {"aggregation": "mean"}), ("random", {"seed": 4}),
                                              ("block-influence", {"batch_size": 2}),
                                              ("angular", {"layer_range": [0, 5]})])
@pytest.mark.parametrize("source", ["uniform", "per-layer widths"])
def test_streamed_depth_pruning_equals_in_memory_bit_for_bit(tmp_path, importance, extra, source):
    """Layer-level pruning scored one block at a time (weight norms; block influence and angular distance on the
    calibration set replayed block by block), the kept blocks written renumbered: the same removed layers, scores,
    tensors, config and sparsity report as in memory; the output reloads and runs."""
    import json

    from llm_compression.checkpoint import load_checkpoint as load
    from llm_compression.prune import prune_model
    from llm_compression.streaming import prune_streamed

    if source == "uniform":
        src = _saved(tmp_path, tiny_llama(0, num_hidden_layers=5), "src")
    else:
        from llm_compression.prune.structured import prune_structured

        m = tiny_llama(0, num_hidden_layers=5)
        assert not prune_structured(m, level="block", ratio=0.5, importance="l2")["uniform"]
        src = _saved(tmp_path, m, "src")
    model, _ = load(src, tokenizer=False)
    if importance in ("block-influence", "angular"):
        extra = {**extra, "calib_ids": torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(6))}
    ref = prune_model(model, method="llm-pruner", level="layer", ratio=0.4, importance=importance, **extra)
    a, b = tmp_path / "in-memory", tmp_path / "streamed"
    save_checkpoint(model, tiny_tokenizer(), a, {"stage": "test"})
    res = prune_streamed(src, b, method="llm-pruner", level="layer", ratio=0.4, importance=importance, **extra)
    removed = res.structured["layers_removed"]
    assert len(removed) == (2 if "layer_range" in extra else 1)
    assert res.structured == ref.structured | {"seconds": res.structured["seconds"],
                                               "gradient_seconds": res.structured["gradient_seconds"]}
    assert res.per_layer_sparsity == ref.per_layer_sparsity and res.sparsity_before == ref.sparsity_before
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    assert cb == ca and cb["num_hidden_layers"] == 5 - len(removed)
    got, _ = load(b, tokenizer=False)
    x = torch.randint(0, 256, (1, 12))
    assert torch.equal(got(x).logits, model(x).logits)


@pytest.mark.parametrize("importance,extra", [("l1", {}), ("l2", {"aggregation": "max"}),
                                              ("random", {"seed": 2, "width_multiple": 8}),
                                              ("activation", {"batch_size": 2})])
@pytest.mark.parametrize("source", ["tied", "untied", "per-layer widths"])
def test_streamed_channel_pruning_equals_in_memory_bit_for_bit(tmp_path, importance, extra, source):
    """The hidden dimension pruned with one block resident at a time (scores in a pass over the blocks, the cut in
    a second; embeddings, head and final norm cut as they are written): the same kept channels, tensors, config
    and report as in memory; the output reloads and runs."""
    import json

    from llm_compression.checkpoint import load_checkpoint as load
    from llm_compression.prune import prune_model
    from llm_compression.streaming import prune_streamed

    if source == "per-layer widths":
        src = _pruned_per_layer(tmp_path)
    else:
        src = _saved(tmp_path, tiny_llama(0, num_hidden_layers=3, tie_word_embeddings=source == "tied"), "src")
    model, _ = load(src, tokenizer=False)
    if importance == "activation":
        extra = {**extra, "calib_ids": torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(7))}
    ref = prune_model(model, method="llm-pruner", level="channel", ratio=0.25, importance=importance, **extra)
    a, b = tmp_path / "in-memory", tmp_path / "streamed"
    save_checkpoint(model, tiny_tokenizer(), a, {"stage": "test"})
    res = prune_streamed(src, b, method="llm-pruner", level="channel", ratio=0.25, importance=importance, **extra)
    assert res.structured["hidden_size"] < 64
    assert res.structured == ref.structured | {"seconds": res.structured["seconds"],
                                               "gradient_seconds": res.structured["gradient_seconds"]}
    assert res.per_layer_sparsity == ref.per_layer_sparsity
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    assert cb == ca and cb["hidden_size"] == res.structured["hidden_size"]
    got, _ = load(b, tokenizer=False)
    x = torch.randint(0, 256, (1, 12))
    assert torch.equal(got(x).logits, model(x).logits)
