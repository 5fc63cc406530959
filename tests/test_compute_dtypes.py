"""One check of the compute dtype, applied alike by calibration, healing and evaluation."""
import pytest
import torch

from llm_compression.heal.train import check_training_dtype
from llm_compression.options.dtypes import COMPUTE_DTYPES, FP16_CPU_REASON, check_compute_dtype
from llm_compression.options.pruning import layerwise_calibrated
from llm_compression.prune import CALIBRATED
from llm_compression.prune.calibration import check_compute_dtype as check_calibration_dtype
from llm_compression.protocols import ProtocolError, check_eval_dtype

STAGES = [
    ("calibration", ValueError, lambda d, dev: check_calibration_dtype(getattr(torch, d, d), dev)),
    ("training", ValueError, check_training_dtype),
    ("evaluation", ProtocolError, check_eval_dtype),
]


@pytest.mark.parametrize("purpose,error,check", STAGES, ids=[s[0] for s in STAGES])
def test_every_stage_refuses_fp16_on_cpu_with_the_same_reason(purpose, error, check):
    with pytest.raises(error) as info:
        check("float16", "cpu")
    assert str(info.value) == f"{purpose} dtype 'float16' is refused on CPU ({FP16_CPU_REASON}); use 'bfloat16' or 'float32'"
    for device in ("cpu", torch.device("cpu"), "cuda:0"):
        check("bfloat16", device)
        check("float32", device)
    check("float16", "cuda")  # fp16 stays allowed off CPU


@pytest.mark.parametrize("purpose,error,check", STAGES, ids=[s[0] for s in STAGES])
def test_every_stage_names_the_valid_dtypes(purpose, error, check):
    with pytest.raises(error, match=f"{purpose} dtype 'int8' is not one of float32, bfloat16, float16"):
        check("int8", "cpu")


def test_the_check_takes_device_strings_and_torch_devices():
    assert check_compute_dtype("bfloat16", torch.device("cuda", 1), purpose="x") == "bfloat16"
    with pytest.raises(ValueError, match="refused on CPU"):
        check_compute_dtype("float16", torch.device("cpu"), purpose="x")
    assert COMPUTE_DTYPES == ("float32", "bfloat16", "float16")


def test_the_layerwise_calibrated_methods_are_the_calibrated_pruners():
    assert set(layerwise_calibrated()) == set(CALIBRATED) == {"sparsegpt", "wanda"}


# --- training dtype "auto" ----------------------------------------------------------------------

def test_cpu_bf16_detection_reads_the_instruction_flags(tmp_path):
    from llm_compression.options.dtypes import cpu_flags, cpu_has_native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_flags(str(info)) == {"fpu", "sse2", "avx2", "fma"}
    assert not cpu_has_native_bf16(cpu_flags(str(info)))
    assert cpu_has_native_bf16({"avx2", "avx512f", "avx512_bf16"})
    assert cpu_has_native_bf16({"amx_tile", "amx_bf16"})
    assert cpu_has_native_bf16({"fp", "asimd", "bf16"})  # ARM (aarch64 "Features" line)
    assert cpu_flags(str(tmp_path / "absent")) == set()


def test_auto_training_dtype_follows_the_cpu(monkeypatch):
    import llm_compression.heal.train as train

    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    dtype, why = train.resolve_training_dtype("auto", "cpu")
    assert dtype == "float32" and "no native bfloat16" in why
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert train.resolve_training_dtype("auto", torch.device("cpu"))[0] == "bfloat16"
    # an explicit dtype is never changed, whatever the CPU
    assert train.resolve_training_dtype("bfloat16", "cpu") == ("bfloat16", "requested")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert train.resolve_training_dtype("bfloat16", "cpu") == ("bfloat16", "requested")


def test_auto_is_a_valid_recipe_dtype_and_schema_value():
    from llm_compression.options.healing import RecipeError, normalize_recipe

    assert normalize_recipe({"method": "lora", "dtype": "auto"})["dtype"] == "auto"
    with pytest.raises(RecipeError, match="dtype 'bf16' not in float32, bfloat16, float16, auto"):
        normalize_recipe({"method": "lora", "dtype": "bf16"})
