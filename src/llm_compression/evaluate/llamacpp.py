"""llama.cpp as a second runtime: the same protocols as the PyTorch evaluators, run on a GGUF artifact.

An artifact of a ``gguf-*`` quantization (:mod:`llm_compression.gguf_export`) is a folder with ``model.gguf``,
the tokenizer files of the checkpoint it was exported from and ``gguf.json``. The evaluators of
:mod:`.records` and :mod:`.memory` hand such folders here, and the records they return have the same
fields as the PyTorch ones, with ``runtime.engine = "llama.cpp"``:

- **perplexity** (:func:`evaluate_perplexity_gguf`): the corpus is tokenized by the folder's Hugging Face
  tokenizer (the same ids as for the PyTorch checkpoint), cut into the same windows, and scored by the same
  :func:`~llm_compression.evaluate.perplexity.perplexity` function; only the forward is llama.cpp's: each
  window is evaluated from an empty KV cache with the logits of every position kept (``logits_all``), and the
  fp32 logits go through the same log-softmax and NLL sum.
- **latency** (:func:`measure_latency_gguf`): the protocol of :mod:`.latency` (a ``prompt_tokens`` prompt of
  the same seeded ids, then ``new_tokens`` greedy single-token steps from its KV cache; median, min, max over
  repeats after warm-up), with llama.cpp computing only the last position's logits, as a deployment does.
- **memory** (:func:`probe_gguf`, run in a fresh process that imports no torch): resident set after loading,
  then the peak over one ``seqlen``-token prompt evaluation (last-position logits, KV cache of ``seqlen``).
- **cost** (:func:`cost_gguf`): parameters counted from the GGUF's tensor shapes, non-zero parameters from
  its tensors dequantized by the ``gguf`` package, bytes on disk of the file, MACs from the shapes (the same
  closed form as the PyTorch count: every Linear over all positions plus attention's score and value products).
- **generation** (:func:`generate_gguf`): greedy continuations of the demo prompts.

Threads: llama.cpp runs with ``n_threads = n_threads_batch = threads`` (the job's), recorded in each record.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

from ..gguf_export import GGUF_RECORD, gguf_file
from .process_memory import quant_scheme

ENGINE = "llama.cpp"


def engine_info(threads: int) -> dict:
    """The runtime block of a llama.cpp record: engine, llama-cpp-python version, threads, device."""
    import importlib.metadata as md

    try:
        version = md.version("llama-cpp-python")
    except md.PackageNotFoundError:  # pragma: no cover
        version = None
    return {"engine": ENGINE, "llama_cpp_python": version, "device": "cpu", "threads": int(threads)}


def gguf_record(artifact) -> dict:
    """The ``gguf.json`` export record of an artifact folder ({} when absent)."""
    p = Path(artifact) / GGUF_RECORD
    return json.loads(p.read_text()) if p.exists() else {}


def load_llama(artifact, *, n_ctx: int, threads: int, logits_all: bool, n_batch: int | None = None):
    """A ``llama_cpp.Llama`` of the artifact's GGUF with a context of ``n_ctx`` tokens, prompt batches of
    ``n_batch`` (default ``n_ctx``: a window in one pass), ``threads`` threads, quiet.

    Raises:
        FileNotFoundError: no GGUF in ``artifact``.
        RuntimeError: llama-cpp-python is not installed.
    """
    try:
        from llama_cpp import Llama
    except ImportError as e:  # pragma: no cover - set-up installs it
        raise RuntimeError("llama-cpp-python is not installed (make setup builds it from source)") from e
    n_batch = int(n_batch or n_ctx)
    return Llama(model_path=str(gguf_file(artifact)), n_ctx=int(n_ctx), n_batch=n_batch, n_ubatch=n_batch,
                 n_threads=int(threads), n_threads_batch=int(threads), logits_all=bool(logits_all),
                 verbose=False, seed=0)


def last_logits(llm):
    """The logits ``[vocab]`` (fp32 numpy, a copy) of the last evaluated position."""
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


class LlamaCppLM:
    """A causal LM over llama.cpp that answers ``model(input_ids=x).logits`` like a transformers model, so
    :func:`~llm_compression.evaluate.perplexity.perplexity` scores it unchanged: each row of ``x``
    ``[batch, seq]`` is evaluated from an empty KV cache and its logits ``[seq, vocab]`` (fp32) returned as
    a torch tensor ``[batch, seq, vocab]``."""

    def __init__(self, llm):
        self.llm = llm

    def __call__(self, input_ids, use_cache: bool = False):
        import numpy as np
        import torch

        rows = []
        for row in input_ids.tolist():
            self.llm.reset()
            self.llm.eval(row)
            rows.append(np.array(self.llm.scores[: len(row)], dtype=np.float32))
        return SimpleNamespace(logits=torch.from_numpy(np.stack(rows)))


def perplexity_windows_gguf(artifact, ids, *, seqlen: int, bos_token_id: int | None, last_window: str,
                            threads: int, progress: bool = False) -> dict:
    """:func:`~llm_compression.evaluate.perplexity.perplexity` of the artifact's GGUF on the token stream ``ids``
    ``[N]`` (batch 1: llama.cpp evaluates one sequence per context here)."""
    from .perplexity import perplexity

    n_ctx = int(seqlen) + (1 if bos_token_id is not None else 0)
    llm = load_llama(artifact, n_ctx=n_ctx, threads=threads, logits_all=True)
    try:
        return perplexity(LlamaCppLM(llm), ids, seqlen=seqlen, batch_size=1, bos_token_id=bos_token_id,
                          last_window=last_window, device="cpu", dtype="float32", progress=progress)
    finally:
        llm.close()


def measure_latency_gguf(artifact, *, prompt_tokens: int = 128, new_tokens: int = 32, repeats: int = 5,
                         warmup: int = 1, seed: int = 0, threads: int = 1) -> dict:
    """Prefill seconds and greedy decode tokens/s of the artifact in llama.cpp, with the protocol and return
    fields of :func:`~llm_compression.evaluate.latency.measure_latency` (``device`` ``cpu``, ``threads``
    llama.cpp's). The prompt is the same seeded ids (``torch.randint`` with ``seed``) as the PyTorch protocol.

    Raises:
        ValueError: a count below 1 (``warmup`` may be 0).
    """
    import numpy as np
    import torch

    from .latency import check_latency_counts, latency_summary

    check_latency_counts(prompt_tokens, new_tokens, repeats, warmup)
    llm = load_llama(artifact, n_ctx=int(prompt_tokens) + int(new_tokens) + 1, threads=threads, logits_all=False,
                     n_batch=max(int(prompt_tokens), 1))
    try:
        vocab = llm.n_vocab()
        ids = torch.randint(0, vocab, (1, int(prompt_tokens)), generator=torch.Generator().manual_seed(seed))[0].tolist()
        prefill, decode = [], []
        for r in range(int(warmup) + int(repeats)):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            nxt = int(np.argmax(last_logits(llm)))
            t1 = time.perf_counter()
            for _ in range(int(new_tokens)):
                llm.eval([nxt])
                nxt = int(np.argmax(last_logits(llm)))
            t2 = time.perf_counter()
            if r >= warmup:
                prefill.append(t1 - t0)
                decode.append(int(new_tokens) / (t2 - t1))
    finally:
        llm.close()
    return latency_summary(prefill, decode, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                           warmup=warmup, threads=int(threads), device="cpu")


def generate_gguf(artifact, tokenizer, prompts: list[str], *, max_new_tokens: int, threads: int = 1) -> list[dict]:
    """Greedy continuations of ``prompts`` by the artifact in llama.cpp: each prompt tokenized by ``tokenizer``
    (the Hugging Face one, as for PyTorch), then ``max_new_tokens`` argmax steps, stopping at EOS.

    Returns:
        one ``{"prompt", "completion", "new_tokens", "new_token_ids", "seconds"}`` per prompt (the fields of
        :func:`~llm_compression.evaluate.generate.generate_greedy`; an EOS that ends a continuation is counted,
        as ``generate`` does).

    Raises:
        ValueError: no prompts, or ``max_new_tokens < 1``.
    """
    import numpy as np

    if not prompts:
        raise ValueError("no prompts given for the generation demo")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} must be >= 1")
    out = []
    enc = [tokenizer(p)["input_ids"] for p in prompts]
    llm = load_llama(artifact, n_ctx=max(len(e) for e in enc) + int(max_new_tokens) + 1, threads=threads,
                     logits_all=False)
    try:
        for prompt, ids in zip(prompts, enc):
            t0 = time.perf_counter()
            llm.reset()
            llm.eval(ids)
            new = []
            for _ in range(int(max_new_tokens)):
                nxt = int(np.argmax(last_logits(llm)))
                new.append(nxt)
                if tokenizer.eos_token_id is not None and nxt == tokenizer.eos_token_id:
                    break
                llm.eval([nxt])
            out.append({"prompt": prompt, "completion": tokenizer.decode(new, skip_special_tokens=True),
                        "new_tokens": len(new), "new_token_ids": new, "seconds": time.perf_counter() - t0})
    finally:
        llm.close()
    return out


# --------------------------------------------------------------------------- cost from the file


def cost_gguf(artifact, *, seqlen: int = 512) -> dict:
    """Parameters, non-zero parameters, sparsity, bytes and MACs of the artifact's GGUF, read from the file.

    - ``parameters``: elements of every tensor (``token_embd`` once: tied embeddings share it);
    - ``nonzero_parameters``: of the tensors dequantized (``gguf.quants.dequantize``);
    - ``sparsity``: zeros over the decoder's Linear weights (``blk.*`` 2-D tensors, ``prunable_weights``; their
      zeros ``zero_weights``), padding rows included;
    - ``disk_bytes``: the ``.gguf`` file; ``linear_bits_per_weight``: stored bits per decoder Linear weight;
    - ``macs`` of one ``seqlen``-token forward: ``seqlen x`` every Linear's ``in x out`` (the output head
      included, ``token_embd`` reused when tied) plus, per layer, ``H_q L^2 d`` score and ``H_q L^2 d`` value
      products (the closed form of :mod:`.cost`).
    """
    import gguf
    import numpy as np

    path = gguf_file(artifact)
    r = gguf.GGUFReader(str(path))
    fields = {k: f for k, f in r.fields.items()}
    arch = fields["general.architecture"].contents()
    head_dim = int(fields[f"{arch}.attention.key_length"].contents())
    heads = fields[f"{arch}.attention.head_count"].contents()
    n_layer = int(fields[f"{arch}.block_count"].contents())
    heads = [int(h) for h in heads] if isinstance(heads, list) else [int(heads)] * n_layer
    params = nonzero = lin_params = lin_zeros = lin_bytes = 0
    macs_linear = 0
    names = {t.name for t in r.tensors}
    for t in r.tensors:
        n = int(np.prod([int(x) for x in t.shape]))
        params += n
        w = gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType(int(t.tensor_type)))
        nz = int(np.count_nonzero(w))
        nonzero += nz
        if len(t.shape) == 2 and (t.name != "token_embd.weight" or "output.weight" not in names):
            macs_linear += int(seqlen) * n  # token_embd counts as the head only when tied
        if t.name.startswith("blk.") and len(t.shape) == 2:
            lin_params += n
            lin_zeros += n - nz
            lin_bytes += int(t.n_bytes)
    scores = sum(h * int(seqlen) * int(seqlen) * head_dim for h in heads)  # values: the same count (d_v = d)
    macs = macs_linear + 2 * scores
    return {
        "parameters": params, "nonzero_parameters": nonzero,
        "sparsity": lin_zeros / lin_params if lin_params else 0.0,
        "prunable_weights": lin_params, "zero_weights": lin_zeros,
        "disk_bytes": int(path.stat().st_size),
        "linear_bits_per_weight": 8.0 * lin_bytes / lin_params if lin_params else None,
        "macs": macs, "gmacs": macs / 1e9, "macs_linear": macs_linear, "macs_attention_scores": scores,
        "macs_attention_values": scores, "macs_seqlen": int(seqlen),
    }


# --------------------------------------------------------------------------- memory, in a fresh process


def probe_gguf(artifact, *, seqlen: int, threads: int | None = None, seed: int = 0) -> dict:
    """Load the artifact in llama.cpp and evaluate one ``seqlen``-token prompt in *this* process (which must
    not have imported torch); return memory figures with the keys of :func:`.memory.probe`."""
    import numpy as np

    from .process_memory import _proc_status_bytes, _rss_split, rss_after_load, rss_after_work

    threads = int(threads or os.cpu_count() or 1)
    out = {"device": "cpu", "threads": threads, "seqlen": int(seqlen), "engine": ENGINE,
           "rss_after_imports_bytes": _proc_status_bytes("VmRSS")}
    out.update(_rss_split("after_imports"))
    llm = load_llama(artifact, n_ctx=int(seqlen), threads=threads, logits_all=False)
    vocab = llm.n_vocab()
    ids = np.random.default_rng(seed).integers(0, vocab, int(seqlen)).tolist()
    reset = rss_after_load(out)
    llm.eval(ids)
    rss_after_work(out, reset, "one prompt evaluation")
    llm.close()
    return out


# --------------------------------------------------------------------------- metrics records


def gguf_metadata(artifact) -> dict:
    """Architecture, context length and layer count of the artifact's GGUF (header only)."""
    import gguf

    r = gguf.GGUFReader(str(gguf_file(artifact)))
    arch = r.fields["general.architecture"].contents()
    return {"architecture": arch, "context_length": int(r.fields[f"{arch}.context_length"].contents()),
            "block_count": int(r.fields[f"{arch}.block_count"].contents())}


class _GGUFModel(LlamaCppLM):
    """:class:`LlamaCppLM` with what :func:`~llm_compression.evaluate.records.perplexity_of_model` reads of a model
    besides its logits: ``config.model_type`` / ``config.max_position_embeddings`` (from the GGUF header), a
    CPU ``parameters()`` (where inputs go) and ``dtype`` (the logits' float32)."""

    dtype = "float32"

    def __init__(self, llm, meta: dict):
        super().__init__(llm)
        # the exporter writes Llama-family models only (llama / deci), which need no BOS per window
        self.config = SimpleNamespace(model_type="llama", max_position_embeddings=meta["context_length"])

    def parameters(self):
        import torch

        return iter([torch.empty(0)])


def _runtime(threads: int, **extra) -> dict:
    return {**engine_info(threads), "dtype": "gguf tensor types (gguf.json)", **extra}


def evaluate_perplexity_gguf(artifact, *, threads: int = 1, progress: bool = False, **kwargs) -> dict:
    """Perplexity of the artifact in llama.cpp under a named protocol: the record of
    :func:`~llm_compression.evaluate.records.perplexity_of_model` (same corpus, tokenizer, windows, scoring),
    with ``runtime.engine = "llama.cpp"``. ``dtype`` other than float32 is refused: the forward runs in the
    GGUF's own tensor types, the logits are float32.

    Raises:
        ProtocolError: a non-float32 ``dtype``, or see :func:`~llm_compression.protocols.resolve_protocol`.
    """
    from transformers import AutoTokenizer

    from ..protocols import ProtocolError
    from .perplexity import perplexity_of_model

    if kwargs.get("dtype", "float32") != "float32":
        raise ProtocolError(f"dtype {kwargs['dtype']!r}: a GGUF artifact runs in its own tensor types in llama.cpp; "
                            "evaluate it with dtype float32 (the logits' type)")
    kwargs["dtype"] = "float32"
    meta = gguf_metadata(artifact)
    seqlen = kwargs.get("seqlen") or meta["context_length"]
    tok = AutoTokenizer.from_pretrained(artifact)
    llm = load_llama(artifact, n_ctx=int(seqlen) + 1, threads=threads, logits_all=True)
    try:
        rec = perplexity_of_model(_GGUFModel(llm, meta), tok, device="cpu", progress=progress,
                                  **{**kwargs, "batch_size": 1})
    finally:
        llm.close()
    rec["protocol"]["batch_size"] = 1
    rec["protocol"]["dtype_note"] = ("llama.cpp forward in the GGUF's tensor types (gguf.json), float32 logits; "
                                     "fp32 log-softmax and NLL sum as for PyTorch")
    rec["protocol"]["quantization"] = quant_scheme(artifact)
    rec["runtime"] = _runtime(threads, **{k: v for k, v in rec["runtime"].items()
                                          if k not in ("device", "dtype", "torch_threads")})
    return rec


def evaluate_cost_gguf(artifact, *, seqlen: int = 512, threads: int = 1) -> dict:
    """:func:`cost_gguf` as a metrics record (the fields of the PyTorch cost record that a file can give)."""
    t0 = time.perf_counter()
    m = cost_gguf(artifact, seqlen=int(seqlen))
    rec = gguf_record(artifact)
    tt = rec.get("tensor_types") or {}
    return {
        "metrics": {**m, "gguf_architecture": rec.get("architecture"), "gguf_file_type": rec.get("file_type"),
                    "gguf_type_counts": tt.get("type_counts"), "gguf_fallback_count": tt.get("fallback_count")},
        "protocol": {"what": "read from the GGUF file: parameters from tensor shapes (token_embd once), non-zero "
                             "parameters of the dequantized tensors (gguf.quants), sparsity over decoder Linear "
                             "weights (blk.* 2-D), bytes of the .gguf on disk, MACs of one forward (batch 1): every "
                             "Linear over all positions plus attention QK^T and AV over the full LxL",
                     "macs_seqlen": int(seqlen), "batch": 1, "macs_counter": "closed form from GGUF tensor shapes",
                     "quantization": rec.get("scheme"), "sparsity_pattern": None},
        "notes": ([f"{tt['fallback_count']} of {tt['weights']} weight tensors are not {tt['main_type']}: their row "
                   f"length is no multiple of {tt['fallbacks'][0]['block']} (llama.cpp stored them as another type)"]
                  if tt.get("fallback_count") else [])
                 + [f"padding: {p}" for p in rec.get("paddings", [])],
        "runtime": _runtime(threads, seconds=time.perf_counter() - t0),
    }


def evaluate_latency_gguf(artifact, *, prompt_tokens: int = 128, new_tokens: int = 32, repeats: int = 5,
                          warmup: int = 1, seed: int = 0, threads: int = 1) -> dict:
    """:func:`measure_latency_gguf` as a metrics record (fields of the PyTorch latency record)."""
    t0 = time.perf_counter()
    r = measure_latency_gguf(artifact, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                             warmup=warmup, seed=seed, threads=threads)
    return {
        "metrics": r,
        "protocol": {"what": "llama.cpp: prefill = evaluation of prompt_tokens (last-position logits); decode = "
                             "new_tokens greedy single-token evaluations from that KV cache; warm-up repeats "
                             "discarded; median with min and max over repeats",
                     **{k: r[k] for k in ("prompt_tokens", "new_tokens", "repeats", "warmup", "threads", "device")},
                     "seed": seed, "quantization": quant_scheme(artifact)},
        "notes": ["llama.cpp's CPU kernels on the GGUF's tensor types; unstructured zeros are multiplied like any "
                  "other weight"],
        "runtime": _runtime(threads, seconds=time.perf_counter() - t0),
    }
