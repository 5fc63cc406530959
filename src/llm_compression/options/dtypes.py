"""Compute dtypes: the one check that every stage (calibration, healing, evaluation) applies to its
``dtype`` option before any heavy work. Torch-free, so planning can call it too.

A *compute dtype* is the dtype matmuls run in (a bf16 copy of a block, or ``torch.autocast``); the
weights of record and every accumulator (Hessians, norms, losses) stay float32.
"""

from __future__ import annotations

#: compute dtypes every stage accepts by name (``float16`` only on CUDA)
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")

#: why ``float16`` is refused on a CPU (the same for every stage)
FP16_CPU_REASON = ("CPU has no fast fp16 matmul kernels, and float16 activations and losses overflow to inf "
                   "silently")


def dtype_name(dtype) -> str:
    """The name of a dtype given by name (returned unchanged) or as a ``torch.dtype``
    (``torch.bfloat16`` -> ``"bfloat16"``)."""
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def device_type(device) -> str:
    """``"cpu"`` / ``"cuda"`` / ... of a device given as a string (``"cuda:0"``) or a ``torch.device``."""
    return str(getattr(device, "type", device)).split(":")[0]


def check_compute_dtype(dtype: str, device, *, purpose: str, error: type[Exception] = ValueError) -> str:
    """Refuse a compute dtype that cannot work on ``device``; returns ``dtype`` unchanged.

    Args:
        dtype: a name from :data:`COMPUTE_DTYPES`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:0"`` or a ``torch.device``.
        purpose: the stage asking, for the message (``"calibration"``, ``"training"``, ``"evaluation"``).
        error: the exception class raised (a ``ValueError`` subclass of the calling stage).

    Raises:
        error: ``dtype`` not one of :data:`COMPUTE_DTYPES` (the message lists them), or ``float16`` on a
            CPU (the message gives the reason and the valid choices ``bfloat16`` / ``float32``).
    """
    if dtype not in COMPUTE_DTYPES:
        raise error(f"{purpose} dtype {dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    if dtype == "float16" and device_type(device) == "cpu":
        raise error(f"{purpose} dtype 'float16' is refused on CPU ({FP16_CPU_REASON}); use 'bfloat16' or 'float32'")
    return dtype
