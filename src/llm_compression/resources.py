"""Per-stage compute resources (runtime, memory, CPUs, GPUs) and device choice, from the config.

The workflow never talks to a scheduler itself: every rule declares Snakemake ``resources:``
(``runtime`` in minutes, ``mem_mb``, ``cpus_per_task``, and ``gpu`` for stages that run on a GPU)
and ``threads:``; an executor such as ``snakemake-executor-plugin-slurm`` turns them into
``sbatch -t/--mem/--cpus-per-task/--gpus`` arguments. Site settings (partition, account, GPU model,
``--gres`` syntax) belong in the Snakemake profile, not here.

Runtime and memory scale linearly with the model size ``S`` in billions of parameters::

    value = (base + per_b * S) * attempt        # attempt = 1, 2, ... when Snakemake retries a job

A stage is *GPU-capable* (prune, heal, quantize, evaluate) or *CPU-only* (import, aggregate,
plots). A GPU-capable stage asks for ``gpus`` GPUs only when its device is ``cuda``: the
stage's own ``device`` if set, else the top-level ``device``. ``auto`` requests none (on a
cluster, ``auto`` means "use a GPU if the node happens to have one").

Config (all optional; defaults in :data:`STAGE_DEFAULTS`)::

    resources:
      model_params_b: 6.74          # S; null = estimated from the model source
      stages:
        prune: {runtime: {base: 15, per_b: 60}, mem_mb: {base: 4000, per_b: 10000}, cpus: 4,
                gpus: 1, device: cuda}
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
from pathlib import Path

#: stages whose scripts move the model to ``device`` (and so may ask for a GPU)
GPU_STAGES = ("prune", "heal", "quantize", "evaluate")
#: stages that never use a GPU
CPU_STAGES = ("import", "aggregate", "plots")
STAGES = ("import",) + GPU_STAGES + ("aggregate", "plots")

#: Defaults per stage: runtime in minutes, mem_mb in MB of host memory (both base + per_b * S),
#: cpus per job (= Snakemake threads = sbatch --cpus-per-task), gpus when the device is cuda.
#: Sized for fp32 weights (4 GB per billion parameters): loading, working copy and saving.
STAGE_DEFAULTS: dict[str, dict] = {
    "import": {"runtime": {"base": 10, "per_b": 10}, "mem_mb": {"base": 3000, "per_b": 10000}, "cpus": 2},
    "prune": {"runtime": {"base": 15, "per_b": 60}, "mem_mb": {"base": 3000, "per_b": 10000}, "cpus": 2,
              "gpus": 1},
    "heal": {"runtime": {"base": 30, "per_b": 180}, "mem_mb": {"base": 4000, "per_b": 12000}, "cpus": 2,
             "gpus": 1},
    "quantize": {"runtime": {"base": 10, "per_b": 10}, "mem_mb": {"base": 3000, "per_b": 10000}, "cpus": 1,
                 "gpus": 1},
    "evaluate": {"runtime": {"base": 15, "per_b": 30}, "mem_mb": {"base": 3000, "per_b": 8000}, "cpus": 1,
                 "gpus": 1},
    "aggregate": {"runtime": {"base": 5, "per_b": 0}, "mem_mb": {"base": 1000, "per_b": 0}, "cpus": 1},
    "plots": {"runtime": {"base": 5, "per_b": 0}, "mem_mb": {"base": 1000, "per_b": 0}, "cpus": 1},
}

#: parameters (billions) of the embedded models, so their resources need no file access
EMBEDDED_PARAMS_B = {"smollm2-135m": 0.135, "gemma3-270m": 0.268}
#: model size assumed when it can be neither read nor estimated (warned about)
FALLBACK_PARAMS_B = 1.0


class ResourceConfigError(ValueError):
    """A ``resources`` config entry that cannot be honoured (names the bad value and what is valid)."""


def safetensors_params(path: str | os.PathLike) -> int:
    """Number of tensor elements in a safetensors file or a directory of them, read from headers only.

    Raises:
        FileNotFoundError: no ``*.safetensors`` file at ``path``.
        ValueError: a file whose header is not valid safetensors.
    """
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no *.safetensors file at {p}")
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError(f"{f}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise ValueError(f"{f}: header length {n} is implausible for safetensors")
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                total += math.prod(meta["shape"])
    return total


def estimate_params_b(source: str) -> float | None:
    """Model size in billions of parameters from a model source string, or None when unknown.

    Embedded models come from :data:`EMBEDDED_PARAMS_B`; a local Hugging Face directory is read
    from its safetensors headers (no weights are loaded); hub ids and GGUF files give None.
    """
    if source.startswith("embedded:"):
        return EMBEDDED_PARAMS_B.get(source.split(":", 1)[1])
    p = Path(os.path.expanduser(source))
    if p.is_dir():
        try:
            return safetensors_params(p) / 1e9
        except (FileNotFoundError, ValueError, KeyError):
            return None
    return None


def _merge(default: dict, override: dict) -> dict:
    out = copy.deepcopy(default)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


class ResourcePlan:
    """Resources and devices of every stage for one validated config.

    Args:
        cfg: a config validated by :func:`llm_compression.config.validate_config`.

    Raises:
        ResourceConfigError: an unknown stage name, a ``device``/``gpus`` entry on a CPU-only
            stage, or a non-positive scaled value.
    """

    def __init__(self, cfg: dict):
        res = cfg.get("resources") or {}
        self.default_device = cfg.get("device", "auto")
        self.warnings: list[str] = []
        size = res.get("model_params_b")
        if size is None:
            size = estimate_params_b(cfg["model"]["source"])
            if size is None:
                size = FALLBACK_PARAMS_B
                self.warnings.append(
                    f"resources.model_params_b is not set and the size of {cfg['model']['source']!r} cannot be "
                    f"read locally; cluster resources assume {FALLBACK_PARAMS_B}B parameters"
                )
        self.params_b = float(size)
        #: ``auto`` / ``never`` / ``always``: whether layer-wise pruning and perplexity evaluations stream decoder
        #: blocks (:mod:`llm_compression.streaming`); ``auto`` decides per job from its planned memory
        self.streaming = res.get("streaming", "auto")
        #: the memory budget jobs are planned against (:class:`llm_compression.memory_plan.Budget`)
        self.memory = dict(res.get("memory") or {})
        overrides = res.get("stages") or {}
        #: stages whose ``mem_mb`` the config sets (the plan's per-job estimate is not used for them)
        self.mem_mb_overridden = {s for s, o in overrides.items() if "mem_mb" in (o or {})}
        unknown = sorted(set(overrides) - set(STAGES))
        if unknown:
            raise ResourceConfigError(f"resources.stages: unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")
        for stage in CPU_STAGES:
            bad = sorted({"device", "gpus"} & set(overrides.get(stage, {})))
            if bad:
                raise ResourceConfigError(
                    f"resources.stages.{stage}: {bad} given, but {stage!r} never uses a GPU; GPU-capable stages: "
                    f"{', '.join(GPU_STAGES)}"
                )
        self.stages = {s: _merge(STAGE_DEFAULTS[s], overrides.get(s, {})) for s in STAGES}
        for s in STAGES:
            for key in ("runtime", "mem_mb"):
                if self.scaled(s, key) <= 0:
                    raise ResourceConfigError(f"resources.stages.{s}.{key}: {self.stages[s][key]} gives a "
                                              f"non-positive value for a {self.params_b}B model")

    def _stage(self, stage: str) -> dict:
        if stage not in self.stages:
            raise ResourceConfigError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
        return self.stages[stage]

    def scaled(self, stage: str, key: str, attempt: int = 1) -> int:
        """``(base + per_b * S) * attempt`` rounded up: minutes for ``runtime``, MB for ``mem_mb``."""
        spec = self._stage(stage)[key]
        return int(math.ceil((spec["base"] + spec["per_b"] * self.params_b) * attempt))

    def device(self, stage: str) -> str:
        """``auto``/``cpu``/``cuda`` for a stage's script; CPU-only stages are always ``cpu``."""
        if stage in CPU_STAGES:
            self._stage(stage)
            return "cpu"
        return self._stage(stage).get("device") or self.default_device

    def gpus(self, stage: str) -> int:
        """GPUs to request: the stage's ``gpus`` when its device is ``cuda``, else 0."""
        if stage in CPU_STAGES or self.device(stage) != "cuda":
            return 0
        return int(self._stage(stage).get("gpus", 0))

    def threads(self, stage: str) -> int:
        """CPU threads of one job of the stage (Snakemake ``threads:``, sbatch ``--cpus-per-task``)."""
        return int(self._stage(stage)["cpus"])

    def snakemake_resources(self, stage: str) -> dict:
        """Keyword arguments for a rule's ``resources:`` directive.

        ``runtime`` and ``mem_mb`` are callables of the retry ``attempt`` (doubling on the second
        try); ``gpu`` is present only when GPUs are requested (the SLURM plugin turns it into
        ``--gpus=N``, or ``--gpus=MODEL:N`` when the profile sets ``gpu_model``).
        """
        out = {
            "runtime": lambda wildcards, attempt: self.scaled(stage, "runtime", attempt),
            "mem_mb": lambda wildcards, attempt: self.scaled(stage, "mem_mb", attempt),
            "cpus_per_task": self.threads(stage),
        }
        n = self.gpus(stage)
        if n:
            out["gpu"] = n
        return out

    def table(self) -> list[dict]:
        """One row per stage (first attempt), for documentation and logs."""
        return [{"stage": s, "device": self.device(s), "runtime_min": self.scaled(s, "runtime"),
                 "mem_mb": self.scaled(s, "mem_mb"), "cpus": self.threads(s), "gpus": self.gpus(s)}
                for s in STAGES]
