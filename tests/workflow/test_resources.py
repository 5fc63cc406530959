"""Per-stage cluster resources: scaling with model size, GPU requests, validation (no model, no SLURM)."""

from __future__ import annotations

import json
import struct

import pytest

from llm_compression.resources import (
    CPU_STAGES,
    FALLBACK_PARAMS_B,
    GPU_STAGES,
    STAGE_DEFAULTS,
    ResourceConfigError,
    ResourcePlan,
    estimate_params_b,
    safetensors_params,
)


def _cfg(source="embedded:smollm2-135m", device="auto", **res):
    return {"device": device, "model": {"name": "m", "source": source}, "resources": res}


def test_scaling_is_base_plus_per_b_times_size_times_attempt():
    plan = ResourcePlan(_cfg(model_params_b=7.0))
    d = STAGE_DEFAULTS["prune"]
    assert plan.scaled("prune", "runtime") == d["runtime"]["base"] + 7 * d["runtime"]["per_b"]
    assert plan.scaled("prune", "mem_mb") == d["mem_mb"]["base"] + 7 * d["mem_mb"]["per_b"]
    assert plan.scaled("prune", "mem_mb", attempt=2) == 2 * plan.scaled("prune", "mem_mb")
    # 7B needs more than the 135M default model; CPU-only aggregate does not grow
    small = ResourcePlan(_cfg())
    assert small.params_b == pytest.approx(0.135)
    for stage in GPU_STAGES + ("import",):
        assert plan.scaled(stage, "mem_mb") > small.scaled(stage, "mem_mb")
        assert plan.scaled(stage, "runtime") > small.scaled(stage, "runtime")
    assert plan.scaled("aggregate", "mem_mb") == small.scaled("aggregate", "mem_mb")


def test_overrides_merge_per_key_and_round_up():
    plan = ResourcePlan(_cfg(model_params_b=0.5, stages={"evaluate": {"runtime": {"per_b": 3}, "cpus": 3}}))
    base = STAGE_DEFAULTS["evaluate"]["runtime"]["base"]
    assert plan.scaled("evaluate", "runtime") == base + 2  # 0.5 * 3 = 1.5 -> rounded up to 2
    assert plan.threads("evaluate") == 3
    assert plan.scaled("evaluate", "mem_mb") == pytest.approx(
        STAGE_DEFAULTS["evaluate"]["mem_mb"]["base"] + 0.5 * STAGE_DEFAULTS["evaluate"]["mem_mb"]["per_b"], abs=1)


def test_gpus_only_for_gpu_stages_on_cuda():
    auto = ResourcePlan(_cfg(device="auto"))
    assert all(auto.gpus(s) == 0 for s in GPU_STAGES + CPU_STAGES)
    cuda = ResourcePlan(_cfg(device="cuda"))
    assert all(cuda.gpus(s) == 1 for s in GPU_STAGES)
    assert all(cuda.gpus(s) == 0 and cuda.device(s) == "cpu" for s in CPU_STAGES)
    res = cuda.snakemake_resources("prune")
    assert res["gpu"] == 1 and res["cpus_per_task"] == cuda.threads("prune")
    assert res["runtime"](None, 1) == cuda.scaled("prune", "runtime")
    assert res["mem_mb"](None, 3) == cuda.scaled("prune", "mem_mb", 3)
    assert "gpu" not in cuda.snakemake_resources("aggregate")
    # per-stage device: only prune on the GPU, with 2 of them
    mixed = ResourcePlan(_cfg(device="cpu", stages={"prune": {"device": "cuda", "gpus": 2}}))
    assert mixed.device("prune") == "cuda" and mixed.gpus("prune") == 2
    assert mixed.device("evaluate") == "cpu" and mixed.gpus("evaluate") == 0
    # gpus: 0 keeps a cuda stage off the GPU request
    assert ResourcePlan(_cfg(device="cuda", stages={"quantize": {"gpus": 0}})).gpus("quantize") == 0


@pytest.mark.parametrize("stages, match", [
    ({"pruning": {"cpus": 1}}, "unknown stage"),
    ({"aggregate": {"device": "cuda"}}, "never uses a GPU"),
    ({"plots": {"gpus": 1}}, "never uses a GPU"),
])
def test_bad_stage_entries_are_refused(stages, match):
    with pytest.raises(ResourceConfigError, match=match):
        ResourcePlan(_cfg(stages=stages))


def test_config_validation_reports_resource_errors():
    from llm_compression.config import ConfigError, validate_config

    base = {"model": {"name": "m", "source": "embedded:smollm2-135m"}, "grid": {}, "evaluation": {}}
    with pytest.raises(ConfigError, match="never uses a GPU"):
        validate_config({**base, "resources": {"stages": {"aggregate": {"gpus": 1}}}}, check_model=False)
    with pytest.raises(ConfigError, match="resources"):  # schema: unknown stage name
        validate_config({**base, "resources": {"stages": {"train": {"cpus": 1}}}}, check_model=False)
    with pytest.raises(ConfigError, match="model_params_b"):
        validate_config({**base, "resources": {"model_params_b": 0}}, check_model=False)
    ok = validate_config({**base, "resources": {"model_params_b": 6.74}}, check_model=False)
    assert ok["resources"]["model_params_b"] == 6.74


def _write_safetensors(path, shapes):
    header = {name: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, 0]} for name, shape in shapes.items()}
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_model_size_from_safetensors_headers(tmp_path):
    _write_safetensors(tmp_path / "model-00001.safetensors", {"a": (1000, 2000), "b": (7,)})
    _write_safetensors(tmp_path / "model-00002.safetensors", {"c": (3, 4, 5)})
    (tmp_path / "config.json").write_text("{}")
    assert safetensors_params(tmp_path) == 2_000_000 + 7 + 60
    assert estimate_params_b(str(tmp_path)) == pytest.approx(2_000_067 / 1e9)
    assert ResourcePlan(_cfg(source=str(tmp_path))).params_b == pytest.approx(2_000_067 / 1e9)


def test_unknown_size_falls_back_with_a_warning():
    plan = ResourcePlan(_cfg(source="meta-llama/Llama-2-7b-hf"))
    assert plan.params_b == FALLBACK_PARAMS_B
    assert plan.warnings and "model_params_b" in plan.warnings[0]
    assert not ResourcePlan(_cfg(source="meta-llama/Llama-2-7b-hf", model_params_b=6.74)).warnings
