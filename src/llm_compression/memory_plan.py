"""Each job's peak memory, estimated before it runs from the model's ``config.json`` and the job's settings.

The plan is arithmetic on the model's shape (:class:`ModelShape`: hidden size, depth, per-layer widths,
vocabulary, weight dtype) and the job's settings (calibration samples x seqlen, evaluation windows and batch,
healing batch, compute dtype, streamed or not). It never loads weights or imports torch, so the workflow runs
it for every job while planning. Three uses:

- **Snakemake resources.** A job's ``mem_mb`` (host memory; ``sbatch --mem`` under the SLURM executor) is its
  host estimate plus :data:`MARGIN`, times the retry attempt, unless the config sets the stage's ``mem_mb``.
- **Refusal before work.** A job whose estimate exceeds the budget (``resources.memory.host_mb``, default the
  planning machine's physical memory; ``resources.memory.device_mb`` for the accelerator when set) is refused
  while planning, with the estimate and what would fit (streaming, fewer calibration windows, a smaller batch).
- **Automatic streaming.** With ``resources.streaming: auto`` a streamable job (layer-wise pruning, perplexity)
  streams one decoder block at a time (:mod:`llm_compression.streaming`) exactly when its in-memory estimate
  exceeds the budget.

Every job also records its estimate beside its measured peak (:func:`job_memory_record`), so each run checks
the plan; ``benchmarks/streaming_memory.py`` prints both for models of 135 M to 1.5 B parameters.

What an estimate counts (bytes, ``parts`` names each term):

- ``runtime``: the Python process with torch and transformers imported and a tokenizer loaded
  (:data:`RUNTIME_BYTES`, measured); ``tokenize``: what encoding a corpus leaves behind (:data:`TOKENIZE_BYTES`).
- ``weights``: the resident weights, ``params x bytes per weight`` (NF4: 4 bits + one absmax byte per block of 64
  for the Linear weights of decoder blocks, the rest as stored). transformers maps a checkpoint's safetensors
  files, so weights count once as they are read, and pruning rewrites them in place (measured: a 538 MB model
  adds 538 MB, not twice that). Streamed: the embedding, the final norm and head, and the largest decoder block.
- ``load``: a second copy where a job makes one: bitsandbytes quantization reads every weight into memory while it
  quantizes (measured: runtime + 2 x weights); healing merges its adapters into new weights; streamed jobs read
  one tensor at a time (the largest block counts).
- ``activations`` / ``hessians`` / ``logits`` / ``gradients`` / ``optimizer``: the working set of the job kind,
  given in each ``estimate_*`` function.

The estimates are upper bounds for pruned descendants (planning uses the base model's shape; a job's own record
re-estimates on its actual input).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

#: resident set of a job process after importing torch, transformers and this package and loading a tokenizer,
#: before any model (measured on CPU, torch 2.13 / transformers 5.23: 289 MB after the imports, 144 MB more with
#: SmolLM2's 49,152-token tokenizer loaded)
RUNTIME_BYTES = 450 * 10**6
#: what tokenizing a corpus leaves in the resident set (the fast tokenizer's encodings, freed to the allocator but
#: not returned to the system): measured +200 MB of peak while encoding LAMBADA test (1.7 MB of text) for
#: calibration windows; counted for every job that tokenizes a corpus (calibrated pruning, healing, perplexity)
TOKENIZE_BYTES = 200 * 10**6
#: the same for an evaluation's test split (PTB test 0.4 MB, WikiText-2 test 1.3 MB of text)
EVAL_TOKENIZE_BYTES = 100 * 10**6
#: CUDA context and cuBLAS workspaces on the device (not in ``torch.cuda.max_memory_allocated``), for budgets
CUDA_CONTEXT_BYTES = 600 * 10**6
#: headroom added to an estimate for Snakemake's ``mem_mb`` (the request, not the estimate)
MARGIN = 0.25
#: bytes per weight of a checkpoint dtype
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}
#: ``resources.streaming`` values
STREAMING_POLICIES = ("auto", "never", "always")


class MemoryPlanError(ValueError):
    """A job whose planned peak does not fit its memory budget; the message names the estimate and the fix."""


def dtype_bytes(dtype: str | None, default: int = 4) -> int:
    """Bytes per element of a dtype name (``float32``, ``bfloat16``, ...); ``default`` for None/``auto``."""
    if dtype in (None, "auto"):
        return default
    name = str(dtype).replace("torch.", "")
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


# --------------------------------------------------------------------------- the model's shape


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that memory depends on.

    Attributes:
        hidden: hidden size ``d``.
        vocab: vocabulary size ``V``.
        attention: per decoder layer, ``(query width, key/value width)`` = heads x head_dim,
            key/value heads x head_dim.
        intermediate: per decoder layer, MLP channels.
        tied: the output head shares the embedding matrix.
        weight_bytes: bytes per stored weight (4 for float32).
        head_dim: width of one attention head.
    """

    hidden: int
    vocab: int
    attention: tuple[tuple[int, int], ...]
    intermediate: tuple[int, ...]
    tied: bool
    weight_bytes: int = 4
    head_dim: int = 64

    @property
    def layers(self) -> int:
        return len(self.intermediate)

    @classmethod
    def from_config(cls, cfg: dict, dtype: str | None = None) -> "ModelShape":
        """From a Hugging Face ``config.json`` dict (``pruned_layer_shapes`` gives per-layer widths).

        Args:
            cfg: the config (a multimodal config's ``text_config`` is used when present).
            dtype: the weights' dtype; None = the config's ``torch_dtype``/``dtype``, else float32.

        Raises:
            ValueError: a config without ``hidden_size``, ``num_hidden_layers`` or ``vocab_size``.
        """
        from .options.pruning import LAYER_SHAPES_KEY

        c = {**cfg, **(cfg.get("text_config") or {})}
        missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if not c.get(k)]
        if missing:
            raise ValueError(f"model config lacks {missing}; a decoder-only transformer's config.json has them")
        d, n = int(c["hidden_size"]), int(c["num_hidden_layers"])
        heads = int(c.get("num_attention_heads") or 1)
        head_dim = int(c.get("head_dim") or d // heads)
        kv = int(c.get("num_key_value_heads") or heads)
        inter = int(c.get("intermediate_size") or 4 * d)
        layers = c.get(LAYER_SHAPES_KEY)
        if layers:
            attention = tuple((int(s["num_attention_heads"]) * head_dim, int(s["num_key_value_heads"]) * head_dim)
                              for s in layers)
            intermediate = tuple(int(s["intermediate_size"]) for s in layers)
        else:
            attention = ((heads * head_dim, kv * head_dim),) * n
            intermediate = (inter,) * n
        stored = dtype or c.get("torch_dtype") or c.get("dtype") or "float32"
        try:
            wb = dtype_bytes(stored)
        except ValueError:
            wb = 4
        return cls(hidden=d, vocab=int(c["vocab_size"]), attention=attention, intermediate=intermediate,
                   tied=bool(c.get("tie_word_embeddings", False)), weight_bytes=wb, head_dim=head_dim)

    def block_linear_params(self, i: int) -> int:
        """Weights of layer ``i``'s Linears: q, k, v, o and gate, up, down."""
        q, kv = self.attention[i]
        return self.hidden * (2 * q + 2 * kv) + 3 * self.hidden * self.intermediate[i]

    def block_params(self, i: int) -> int:
        """Parameters of decoder layer ``i`` (Linears and two norms)."""
        return self.block_linear_params(i) + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def outer_params(self) -> int:
        """Parameters outside the decoder blocks: embedding, final norm, head (when untied)."""
        return self.embedding_params * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.outer_params + sum(self.block_params(i) for i in range(self.layers))

    @property
    def largest_block(self) -> int:
        return max(range(self.layers), key=self.block_params)

    def weight_bytes_total(self, quantization: str | None = None) -> int:
        """Bytes of all weights as stored, or after ``quantization`` (``nf4``/``fp4`` families, ``int8``)."""
        linear = sum(self.block_linear_params(i) for i in range(self.layers))
        rest = self.params - linear
        if quantization and quantization.startswith(("nf4", "fp4")):
            return rest * self.weight_bytes + linear // 2 + linear // 64  # 4-bit codes + absmax per 64
        if quantization and quantization.startswith("int8"):
            return rest * self.weight_bytes + linear + 4 * sum(self.intermediate) * 3  # + row scales
        return self.params * self.weight_bytes


# --------------------------------------------------------------------------- estimates


@dataclass
class Estimate:
    """A job's planned peak memory.

    Attributes:
        host_bytes: peak resident set of the job's process (bytes).
        device_bytes: peak on the accelerator when the job runs on CUDA (0 on CPU), CUDA context included.
        streamed: whether the job streams decoder blocks.
        parts: the terms of the host estimate (bytes), for the message and the record.
    """

    host_bytes: int
    device_bytes: int = 0
    streamed: bool = False
    parts: dict = field(default_factory=dict)
    #: GPUs the model's layers are spread over (accelerate ``device_map``); ``device_bytes`` is then per GPU
    gpus: int = 1

    @property
    def host_mb(self) -> int:
        return int(math.ceil(self.host_bytes / 1e6))

    def where(self) -> str:
        """The planned peak in words: ``"1.2 GB host, 3.4 GB device"``."""
        return _where(self)

    def record(self) -> dict:
        return {"estimate_host_bytes": int(self.host_bytes), "estimate_device_bytes": int(self.device_bytes),
                "streamed": self.streamed, "gpus": self.gpus,
                "estimate_parts_bytes": {k: int(v) for k, v in self.parts.items()}}


def spread(est: Estimate, gpus: int) -> Estimate:
    """``est`` with the model's layers spread over ``gpus`` GPUs (accelerate's ``device_map="auto"``): each GPU
    holds its CUDA context, a ``1/gpus`` share of the weights and, conservatively, the whole working set (one
    block's activations pass through every GPU; the logits land on the last). ``device_bytes`` is per GPU.

    Raises:
        ValueError: ``gpus`` < 1.
    """
    if gpus < 1:
        raise ValueError(f"gpus {gpus!r}: at least 1")
    if gpus == 1 or not est.device_bytes:
        return est
    weights = est.parts.get("weights", 0)
    per_gpu = est.device_bytes - weights + math.ceil(weights / gpus)
    return Estimate(est.host_bytes, per_gpu, est.streamed, est.parts, gpus)


def _finish(parts: dict, cuda: bool, streamed: bool) -> Estimate:
    """Sum the terms: on CPU everything is host memory; on CUDA the model and working set are on the device,
    and the host holds the runtime, any copy loading makes and the weights' mapped files as they pass through
    (a cgroup memory limit such as sbatch --mem counts mapped file pages)."""
    parts = {k: int(v) for k, v in parts.items() if v}
    if not cuda:
        return Estimate(sum(parts.values()), 0, streamed, parts)
    host = sum(parts.get(k, 0) for k in ("runtime", "tokenize", "load", "weights"))
    device = CUDA_CONTEXT_BYTES + sum(v for k, v in parts.items() if k not in ("runtime", "tokenize", "load"))
    return Estimate(host, device, streamed, parts)


def _load_parts(shape: ModelShape, streamed: bool, quantization: str | None = None, copy: bool = False) -> dict:
    """Weights resident and the copy a job makes beside them (``copy``; see the module doc)."""
    if streamed:
        block = shape.block_params(shape.largest_block) * shape.weight_bytes
        outer = shape.outer_params * shape.weight_bytes
        return {"weights": outer + block, "load": block}
    w = shape.weight_bytes_total(quantization)
    return {"weights": w, "load": shape.params * shape.weight_bytes if copy else 0}


def _hessian_bytes(shape: ModelShape, i: int, hessian_bytes: int = 4) -> int:
    """SparseGPT's Hessians ``H = 2 X X^T`` of layer ``i``'s Linears, ``cols x cols`` each, accumulated for the
    whole block at once (q/k/v share the input's, gate/up share theirs; o: query width, down: MLP channels), or,
    while the Linears are solved one by one (Frantar & Alistarh 2023, Alg. 1) and each Hessian is freed after its
    Linear, the largest one's factorization: the Hessian (dampened in place), its inverse and one Cholesky
    factor."""
    q, _ = shape.attention[i]
    d, m = shape.hidden, shape.intermediate[i]
    cols = [d, d, q, m]
    return hessian_bytes * max(sum(c * c for c in cols), 3 * max(cols) ** 2)


def _block_forward_bytes(shape: ModelShape, i: int, tokens: int, compute: int) -> int:
    """Intermediates of one batch of ``tokens`` tokens through decoder layer ``i``: the MLP's gate and up
    projections and the attention's projections (PyTorch's CPU/CUDA scaled-dot-product attention does not keep
    the ``heads x seqlen^2`` scores)."""
    return tokens * (2 * shape.intermediate[i] + 2 * shape.hidden) * compute


def estimate_prune(shape: ModelShape, prune: dict, *, streamed: bool = False, cuda: bool = False) -> Estimate:
    """Peak of one prune job (its ``params.prune``: ``method``, ``level``, ``calibration``...).

    Layer-wise methods (magnitude, Wanda, SparseGPT; SparseGPT's sequential scheme, Frantar & Alistarh 2023,
    Sec. 3): the calibration activations ``samples x seqlen x d`` (compute dtype) of the block being pruned and
    one batch's block output, then ``block_work``: the larger of one batch's intermediates through the block
    and SparseGPT's Hessians with one working inverse (they take turns).
    Structured criteria with gradients (LLM-Pruner's Taylor importance, Ma et al. 2023, Eq. 3-5): the weights'
    gradients and the activations a backward pass keeps (:func:`_backward_activations`; with the entry's
    ``gradient_checkpointing``, one block's plus each block's input). Structured block-level
    pruning scored from the weights (L1, L2, random), streamed: one block read, its cut copy and one Linear's
    float64 scores; scored from activations (Minitron), also the calibration hidden states and one batch's
    block forward (with ``contribution``, each head's float64 ``o_proj`` output); depth criteria on the
    calibration set (block influence, angular distance), each block's inputs and outputs for all windows (angular:
    the stream at as many more block boundaries as blocks are removed).

    Budgets are checked by :func:`choose`; this only estimates.
    """
    method = prune.get("method")
    cal = prune.get("calibration") or {}
    compute = dtype_bytes(cal.get("dtype"), 4)
    samples, seqlen = int(cal.get("samples") or 0), int(cal.get("seqlen") or 0)
    batch = min(int(cal.get("batch_size") or 8), max(samples, 1))
    parts = {"runtime": RUNTIME_BYTES, **_load_parts(shape, streamed)}
    i = shape.largest_block
    if samples:
        parts["tokenize"] = TOKENIZE_BYTES
    if method in ("sparsegpt", "wanda", "magnitude"):
        if method != "magnitude":
            parts["activations"] = (samples + batch) * seqlen * shape.hidden * compute
            # the block's forwards (statistics, then the next block's inputs) and SparseGPT's solves take turns
            work = _block_forward_bytes(shape, i, batch * seqlen, compute)
            if method == "sparsegpt":
                hb = 8 if prune.get("hessian_dtype") == "float64" else 4
                work = max(work, _hessian_bytes(shape, i, hessian_bytes=hb))
            parts["block_work"] = work
        if streamed:  # the input embeddings only until the block-0 inputs exist; then one block and its writing
            block = shape.block_params(i) * shape.weight_bytes
            parts.pop("weights")
            block_turn = block + parts.pop("load") + parts.pop("block_work", 0)  # read, worked on, written
            # the outer weights are copied, then the embeddings read, one tensor at a time: a tensor's mapped
            # pages beside its copy, the embedding being the largest
            parts["embedding_or_block"] = max(2 * shape.embedding_params * shape.weight_bytes, block_turn)
        return _finish(parts, cuda, streamed)
    from .options.pruning import streamable

    if streamed and streamable(prune):  # structured, scored from each block's weights or outputs
        level = prune.get("level")
        importance = prune.get("importance") or str(method).split("-", 1)[-1]
        block = shape.block_params(i) * shape.weight_bytes
        largest = shape.hidden * max(shape.intermediate[i], shape.attention[i][0])
        # the block read, its cut copy, and one member's float64 scores (the weights as float64 and |w| or w^2)
        work = 2 * 8 * largest
        # the weights outside the blocks, one tensor at a time: read (mapped pages beside the copy) and, at the
        # channel level, cut; scored there by L1/L2, also as float64 and its |w| or w^2
        emb = shape.embedding_params
        outer = 2 * emb * shape.weight_bytes + (2 * 8 * emb if level == "channel" and importance in ("l1", "l2") else 0)
        if samples and level == "layer":  # block influence, angular distance: each block's inputs and outputs
            # for the whole calibration set; angular keeps the stream at the last n + 1 boundaries
            states = 2 + (math.ceil(float(prune.get("ratio") or 0) * shape.layers) if importance == "angular" else 0)
            parts["activations"] = states * samples * seqlen * shape.hidden * 4
            work = max(work, _block_forward_bytes(shape, i, batch * seqlen, 4) + 2 * batch * seqlen * shape.hidden * 8)
        elif samples:  # Minitron's statistics: the calibration set replayed block by block (float32 hidden states)
            parts["activations"] = (samples + batch) * seqlen * shape.hidden * 4
            if level == "channel":  # each window's |LN(h)| summed over the norms, float64
                parts["activations"] += samples * seqlen * shape.hidden * 8
            work = max(work, _block_forward_bytes(shape, i, batch * seqlen, 4))
            if importance == "contribution":
                # each head's o_proj output, float64: batch x seqlen x heads x d (twice: product and norm input)
                work += 2 * batch * seqlen * (shape.attention[i][0] // shape.head_dim) * shape.hidden * 8
        parts.pop("weights")
        parts["embedding_or_block"] = max(outer, block + parts.pop("load") + block + work)
        return _finish(parts, cuda, True)
    # structured (LLM-Pruner style) and depth criteria: whole model resident

    needs_grad = whole_model_gradients(prune)
    tokens = samples * seqlen if samples else 10 * 128
    step = min(tokens, (batch or 1) * (seqlen or 128))
    if needs_grad:
        parts["gradients"] = shape.params * 4
        parts["activations"] = _backward_activations(shape, step, bool(prune.get("gradient_checkpointing")))
        parts["logits"] = 3 * step * shape.vocab * 4
    else:
        parts["activations"] = _block_forward_bytes(shape, shape.largest_block, step, compute)
        parts["logits"] = step * shape.vocab * 4
    return _finish(parts, cuda, False)


def whole_model_gradients(prune: dict) -> bool:
    """Whether a prune job (its ``params.prune``, or a config entry) takes gradients of the whole model: the
    Taylor criteria of structured pruning (:func:`~llm_compression.options.pruning.structured_importance`)."""
    from .options.pruning import GRADIENT_IMPORTANCES, structured_importance

    return structured_importance(prune) in GRADIENT_IMPORTANCES


def _backward_activations(shape: ModelShape, tokens: int, checkpointing: bool = False) -> int:
    """Activations autograd keeps for one backward pass over ``tokens`` tokens (float32): per layer about
    ``10 d + 4 m`` values per token (norm inputs, q/k/v/o, gate/up/act/down inputs) plus the attention
    probabilities ``heads x seqlen`` (eager attention); with gradient checkpointing one layer's worth plus each
    layer's input."""
    per_layer = [tokens * (10 * shape.hidden + 4 * m) * 4 for m in shape.intermediate]
    if checkpointing:
        return max(per_layer) + shape.layers * tokens * shape.hidden * 4
    return sum(per_layer)


def estimate_heal(shape: ModelShape, recipe: dict, *, cuda: bool = False) -> Estimate:
    """Peak of one healing job (a normalised recipe: ``method`` lora/kd, ``batch_size``, ``seqlen``, ``lora.rank``).

    LoRA (Hu et al. 2022): frozen weights, adapters ``r x (in + out)`` per targeted Linear with their gradient
    and two Adam moments, the activations of one step's backward, logits and their gradient. Distillation adds
    the teacher's weights and logits (Hinton et al. 2015).
    """
    batch, seqlen = int(recipe.get("batch_size") or 4), int(recipe.get("seqlen") or 128)
    tokens = batch * seqlen
    rank = int((recipe.get("lora") or {}).get("rank") or 8)
    adapters = sum(rank * (shape.hidden + q) * 2 + rank * (shape.hidden + kv) * 2
                   + rank * (shape.hidden + m) * 3 for (q, kv), m in zip(shape.attention, shape.intermediate))
    parts = {"runtime": RUNTIME_BYTES, **_load_parts(shape, False, copy=True),
             "optimizer": adapters * 4 * 4,
             "activations": _backward_activations(shape, tokens, bool(recipe.get("gradient_checkpointing"))),
             "logits": 3 * tokens * shape.vocab * 4, "tokenize": TOKENIZE_BYTES}
    if recipe.get("method") == "kd":
        parts["teacher"] = shape.params * shape.weight_bytes
        parts["teacher_logits"] = 2 * tokens * shape.vocab * 4
    return _finish(parts, cuda, False)


def estimate_quantize(shape: ModelShape, quantize: dict, *, streamed: bool = False, cuda: bool = False) -> Estimate:
    """Peak of one quantization job (``scheme``). bitsandbytes on CPU (transformers quantizes while loading):
    the mapped weights, a copy of the weights it keeps in full precision (embeddings, head, norms) and the
    quantized Linears (measured on SmolLM2-135M: after loading, 589 MB of mapped files and 227 MB of new memory);
    on CUDA (not measured here: no GPU) the device holds the quantized model and one block in full precision,
    the host the mapped files. Streamed (:func:`llm_compression.quantize.quantize_streamed`): the outer weights,
    one block read, its working copy and its 4-bit copy. GGUF export converts tensor by tensor (the mapped
    weights)."""
    scheme = str(quantize.get("scheme", ""))
    bnb = scheme.startswith(("nf4", "fp4", "int8"))
    block = shape.block_params(shape.largest_block) * shape.weight_bytes
    if streamed:
        q_block = shape.block_linear_params(shape.largest_block) // 2
        copying = 2 * shape.embedding_params * shape.weight_bytes  # outer weights copied one tensor at a time
        parts = {"runtime": RUNTIME_BYTES, "embedding_or_block": max(copying, 3 * block + q_block)}
        return _finish(parts, cuda, True)
    parts = {"runtime": RUNTIME_BYTES, **_load_parts(shape, False)}
    if bnb:
        quantized = shape.weight_bytes_total(scheme)
        outer = shape.outer_params * shape.weight_bytes
        parts.update(load=outer, quantized=quantized - outer)  # full-precision copies + the 4-bit Linears
        if cuda:  # weights pass through the host (mapped files) and are quantized as each reaches the device
            parts.update(weights=block, load=shape.params * shape.weight_bytes, quantized=quantized)
    return _finish(parts, cuda, False)


def estimate_evaluation(shape: ModelShape, evaluation: dict, *, streamed: bool = False, cuda: bool = False,
                        quantization: str | None = None) -> Estimate:
    """Peak of one evaluation job (its ``params.evaluation``: ``kind``, ``seqlen``, ``batch_size``, ``max_tokens``).

    Perplexity: one batch's ``batch x seqlen x V`` float32 logits (log-softmaxed in chunks, no second copy:
    :func:`llm_compression.evaluate.perplexity.window_nll`) and block intermediates. Streamed (all windows through
    block ``i``, then ``i + 1``: the SparseGPT reference's evaluation): every window's hidden state ``windows x
    seqlen x d`` twice (input and output of a block), and in turn the embeddings (read for the block-0 inputs),
    one block being read and run (beside the embeddings when the head is tied to them), the norm and head with
    one batch's logits. Zero-shot: logits of one batch of (context + continuation) sequences, their log-softmax
    and the previous batch's, a batch being at most ``batch x BATCH_TOKENS_PER_REQUEST`` (256) padded tokens
    (:mod:`llm_compression.evaluate.zeroshot`'s bound).
    Cost, memory, latency: the model and one sequence. Tokenizing a test split leaves :data:`EVAL_TOKENIZE_BYTES`.
    """
    kind = evaluation.get("kind", "perplexity")
    seqlen = int(evaluation.get("seqlen") or 512)
    batch = int(evaluation.get("batch_size") or 1)
    parts = {"runtime": RUNTIME_BYTES, **_load_parts(shape, streamed, quantization)}
    i = shape.largest_block
    if kind in ("perplexity", "zeroshot"):
        parts["tokenize"] = EVAL_TOKENIZE_BYTES
    if kind == "perplexity":
        tokens = evaluation.get("max_tokens")
        windows = max(1, math.ceil(int(tokens) / seqlen)) if tokens else 64
        step = min(batch, windows) * seqlen
        logits = step * shape.vocab * 4
        activations = _block_forward_bytes(shape, i, step, 4)
        if streamed:  # three phases: embeddings (block-0 inputs), one block at a time, norm and head (logits)
            parts["hidden_states"] = 2 * windows * seqlen * shape.hidden * 4
            emb = shape.embedding_params * shape.weight_bytes
            block_turn = parts.pop("load") + parts.pop("weights") - shape.outer_params * shape.weight_bytes
            tied = emb if shape.tied else 0  # a tied head is the embedding: it stays through the blocks
            parts["embedding_block_or_head"] = max(
                2 * emb,  # reading the embeddings: mapped pages beside the copy
                tied + block_turn + activations,
                emb + shape.hidden * shape.weight_bytes + max(0 if shape.tied else emb, logits))
        else:
            parts.update(logits=logits, activations=activations)
    elif kind == "zeroshot":  # a batch holds at most batch x BATCH_TOKENS_PER_REQUEST padded tokens
        from .evaluate.zeroshot import BATCH_TOKENS_PER_REQUEST

        step = batch * BATCH_TOKENS_PER_REQUEST
        # the batch's logits and their log-softmax, beside the previous batch's log-softmax (lm-eval's loop holds
        # it until the next call returns): measured on SmolLM2-135M, BoolQ, 200 documents, 2,020-token batches
        parts["logits"] = 3 * step * shape.vocab * 4
        parts["activations"] = _block_forward_bytes(shape, i, step, 4)
    else:
        parts["activations"] = _block_forward_bytes(shape, i, seqlen, 4)
        parts["logits"] = seqlen * shape.vocab * 4
    return _finish(parts, cuda, streamed)


# --------------------------------------------------------------------------- budgets and choices


def host_memory_bytes() -> int | None:
    """Physical memory of this machine (``MemTotal`` of ``/proc/meminfo``), or None where unreadable."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Budget:
    """Memory a job may use: ``host_bytes`` (resident set) and ``device_bytes`` (accelerator; None = unchecked)."""

    host_bytes: int | None
    device_bytes: int | None = None

    @classmethod
    def from_config(cls, memory: dict | None) -> "Budget":
        memory = memory or {}
        host = memory.get("host_mb")
        device = memory.get("device_mb")
        return cls(int(host) * 10**6 if host else host_memory_bytes(), int(device) * 10**6 if device else None)

    def fits(self, est: Estimate) -> bool:
        return ((self.host_bytes is None or est.host_bytes <= self.host_bytes)
                and (self.device_bytes is None or est.device_bytes <= self.device_bytes))

    def describe(self) -> str:
        out = [f"host {self.host_bytes / 1e9:,.1f} GB" if self.host_bytes else "host unchecked"]
        if self.device_bytes:
            out.append(f"device {self.device_bytes / 1e9:,.1f} GB")
        return ", ".join(out)


def _gb(n: int) -> str:
    return f"{n / 1e9:,.2f} GB"


def _where(est: Estimate) -> str:
    return f"{_gb(est.host_bytes)} host" + (f", {_gb(est.device_bytes)} device" if est.device_bytes else "")


def choose(job: str, in_memory: Estimate, streamed: Estimate | None, policy: str, budget: Budget,
           hint: str = "", max_gpus: int = 1) -> Estimate:
    """The estimate a job runs under: streamed or not by ``policy`` (``auto``: stream exactly when the in-memory
    estimate does not fit and the job can stream), checked against ``budget``. With ``max_gpus`` > 1 (heal and
    evaluate jobs on CUDA, ``resources.<stage>.gpus``) an in-memory job that does not fit one GPU's
    ``device_mb`` is spread over the fewest GPUs it fits (:func:`spread`), before streaming is considered.

    Args:
        job: the job's name, for the message.
        in_memory: the estimate with the whole model resident.
        streamed: the estimate streamed one decoder block at a time, or None when the job cannot stream.
        policy: ``resources.streaming``.
        hint: what else would lower the estimate (fewer calibration windows, a smaller batch), for the message.

    Raises:
        MemoryPlanError: the chosen estimate exceeds the budget; names the estimate, the budget and the fix.
        ValueError: an unknown policy.
    """
    if policy not in STREAMING_POLICIES:
        raise ValueError(f"resources.streaming: {policy!r}; valid: {', '.join(STREAMING_POLICIES)}")
    wide = in_memory
    if budget.device_bytes and in_memory.device_bytes > budget.device_bytes:
        for n in range(2, int(max_gpus) + 1):  # the fewest GPUs whose share fits
            wide = spread(in_memory, n)
            if budget.fits(wide):
                break
    if policy == "always" and streamed is not None:
        chosen = streamed
    elif policy == "auto" and streamed is not None and not budget.fits(wide):
        chosen = streamed
    else:
        chosen = wide
    if budget.fits(chosen):
        return chosen
    parts = ", ".join(f"{k} {_gb(v)}" for k, v in sorted(chosen.parts.items(), key=lambda kv: -kv[1]))
    fixes = []
    if streamed is not None and chosen is not streamed:
        fixes.append(f"streaming (resources.streaming: auto or always) plans {_where(streamed)}"
                     + ("" if budget.fits(streamed) else ", which does not fit either"))
    elif streamed is None:
        fixes.append("this job cannot stream (layer-wise pruning, structured pruning without whole-model gradients, "
                     "4-bit quantization and perplexity do)")
    if budget.device_bytes and in_memory.device_bytes > budget.device_bytes and not chosen.streamed:
        n = next((k for k in range(int(max_gpus) + 1, 65) if budget.fits(spread(in_memory, k))), None)
        if n is not None:
            fixes.append(f"spreading its layers over {n} GPUs (resources.stages.<stage>.gpus: {n}; heal and "
                         f"evaluate) plans {_gb(spread(in_memory, n).device_bytes)} per GPU")
    if hint:
        fixes.append(hint)
    fixes.append("a machine with more memory (resources.memory.host_mb / device_mb say what the node has)")
    raise MemoryPlanError(
        f"{job}: planned peak {_where(chosen)}{f' per GPU over {chosen.gpus} GPUs' if chosen.gpus > 1 else ''} "
        f"({'streamed' if chosen.streamed else 'in memory'}: {parts}) "
        f"exceeds the memory budget ({budget.describe()}); what would fit: {'; '.join(fixes)}"
    )


def request_mb(est: Estimate, attempt: int = 1) -> int:
    """Snakemake ``mem_mb`` for a job: its host estimate plus :data:`MARGIN`, times the retry ``attempt``."""
    return int(math.ceil(est.host_bytes * (1 + MARGIN) / 1e6)) * int(attempt)


def measured_peak_bytes() -> int | None:
    """This process's peak resident set so far (``VmHWM``, resets by the memory probes notwithstanding), or None
    where unreadable."""
    from .evaluate.process_memory import process_peak_rss_bytes

    return process_peak_rss_bytes()


def estimate_job(stage: str, checkpoint_dir, settings: dict, *, streamed: bool = False, device: str = "cpu",
                 quantization: str | None = None) -> Estimate | None:
    """A running job's estimate on its actual input (``checkpoint_dir``'s ``config.json``: a pruned model's own
    widths), for its record; None when the checkpoint has no readable config.json.

    Args:
        stage: ``prune`` (``settings`` = params.prune), ``heal`` (the recipe), ``quantize`` (``{"scheme": ...}``)
            or ``evaluate`` (params.evaluation with its ``kind``).
        quantization: the evaluated artifact's bitsandbytes scheme, if any.
    """
    import json
    from pathlib import Path

    path = Path(checkpoint_dir) / "config.json"
    try:
        shape = ModelShape.from_config(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        return None
    cuda = str(device).startswith("cuda")
    if stage == "prune":
        return estimate_prune(shape, settings, streamed=streamed, cuda=cuda)
    if stage == "heal":
        return estimate_heal(shape, settings, cuda=cuda)
    if stage == "quantize":
        return estimate_quantize(shape, settings, streamed=streamed, cuda=cuda)
    return estimate_evaluation(shape, settings, streamed=streamed, cuda=cuda, quantization=quantization)


def job_memory_record(est: Estimate | None, device=None) -> dict:
    """The estimate beside what the job measured: ``measured_peak_rss_bytes`` (the whole process since it
    started, :func:`measured_peak_bytes`), the ratio measured / estimated, and on CUDA
    ``torch.cuda.max_memory_allocated``. Empty when ``est`` is None."""
    if est is None:
        return {}
    out = est.record()
    peak = measured_peak_bytes()
    if peak:
        out["measured_peak_rss_bytes"] = int(peak)
        out["measured_over_estimate"] = round(peak / est.host_bytes, 4)
    if device is not None and str(device).startswith("cuda"):
        import torch

        out["measured_peak_device_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def record_job_memory(log_path: str | os.PathLike | None, est: Estimate | None, device=None, log=None) -> dict:
    """At a job's end: its estimate beside its measured peak (:func:`job_memory_record`), logged as one line
    and written to ``<log_path>.memory.json`` next to the job's log, where ``benchmarks/memory_plan_check.py``
    gathers every job of a run. Returns the record (empty when ``est`` is None)."""
    import json

    rec = job_memory_record(est, device)
    if not rec:
        return rec
    if log is not None:
        peak = rec.get("measured_peak_rss_bytes")
        log(f"memory: planned {rec['estimate_host_bytes'] / 1e6:,.0f} MB host"
            + (f", measured peak {peak / 1e6:,.0f} MB ({rec['measured_over_estimate']:.2f} of planned)" if peak else "")
            + (" (streamed)" if rec["streamed"] else ""))
    if log_path:
        with open(f"{log_path}.memory.json", "w") as fh:
            json.dump(rec, fh, indent=1)
    return rec


__all__ = [
    "Budget", "CUDA_CONTEXT_BYTES", "Estimate", "MARGIN", "MemoryPlanError", "ModelShape", "RUNTIME_BYTES",
    "TOKENIZE_BYTES", "EVAL_TOKENIZE_BYTES",
    "STREAMING_POLICIES", "choose", "dtype_bytes", "estimate_evaluation", "estimate_heal", "estimate_job",
    "estimate_prune", "record_job_memory",
    "estimate_quantize", "host_memory_bytes", "job_memory_record", "measured_peak_bytes", "request_mb",
    "whole_model_gradients",
]
