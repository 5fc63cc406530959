"""Greedy generations of the demo prompts by one variant -> JSON (put side by side by rule demo)."""
import time

from llm_compression.gguf_export import is_gguf_artifact
from llm_compression.io import write_json_atomic
from llm_compression.runtime import finish_job, setup_job

sm = snakemake  # noqa: F821
log = setup_job(sm.log[0], sm.threads, seed=0)
t0 = time.perf_counter()
if is_gguf_artifact(sm.input[0]):  # a GGUF variant continues the prompts in llama.cpp
    from transformers import AutoTokenizer

    from llm_compression.evaluate.llamacpp import generate_gguf

    gens = generate_gguf(sm.input[0], AutoTokenizer.from_pretrained(sm.input[0]), list(sm.params.prompts),
                         max_new_tokens=sm.params.max_new_tokens, threads=sm.threads)
else:
    from llm_compression.evaluate.generate import generate_greedy
    from llm_compression.models import load_checkpoint, pick_device

    device = pick_device(sm.params.device)
    model, tok = load_checkpoint(sm.input[0], device=device)
    gens = generate_greedy(model, tok, list(sm.params.prompts), max_new_tokens=sm.params.max_new_tokens,
                           device=device)
write_json_atomic(sm.output[0], {
    "model": sm.params.model,
    "variant": dict(sm.params.variant)["variant"],
    "artifact": sm.input[0],
    "params": {"decoding": "greedy", "max_new_tokens": sm.params.max_new_tokens},
    "generations": gens,
    "wall_seconds": time.perf_counter() - t0,
})
log.info("generated %d completions", len(gens))
finish_job()  # every output is written: exit without tearing down torch and transformers (~1 s)
