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
