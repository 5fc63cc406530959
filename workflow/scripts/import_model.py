"""Import the configured model into a fp32 safetensors checkpoint (results/{model}/base)."""
import time

from llm_compression.models import load_source, resolve_source, save_checkpoint
from llm_compression.runtime import finish_job, setup_job

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup_job(sm.log[0], sm.threads)
t0 = time.perf_counter()
res = resolve_source(sm.params.source)
model, tok = load_source(sm.params.source, dtype=sm.params.dtype)
log.info("loaded %s (%s) in %.1fs", sm.params.source, res.kind, time.perf_counter() - t0)
save_checkpoint(model, tok, sm.output[0], {
    "stage": "import",
    "source": sm.params.source,
    "source_kind": res.kind,
    "note": res.note,
    "dtype": sm.params.dtype,
    "wall_seconds": time.perf_counter() - t0,
})
finish_job()  # every output is written: exit without tearing down torch and transformers (~1 s)
