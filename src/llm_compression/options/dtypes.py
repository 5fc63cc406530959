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


#: the training dtype name that picks bfloat16 where the device runs it natively, float32 otherwise
AUTO = "auto"

#: ``/proc/cpuinfo`` flags of x86 CPUs with native bfloat16 matmul instructions (AVX512-BF16, AMX-BF16)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in ``path`` (empty where the file is absent, e.g. macOS)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU has bfloat16 matmul instructions (:data:`CPU_BF16_FLAGS`; ARM ``bf16``).

    Without them PyTorch emulates bfloat16 matmuls, and a bfloat16 autocast training step runs many
    times slower than float32 (measured here: ~60 s vs a few seconds per LoRA step on an AVX2-only EPYC).
    """
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in CPU_BF16_FLAGS) or "bf16" in flags


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
