"""Inference precision of the GLiDRE heads (pair scorer and span head).

The heads are dense matrix products over every entity pair (about 1.5M multiply-adds per pair
for the default model), and on a CPU they run at fp32 peak: only a narrower type makes them
faster. With native bf16 (AVX512-BF16/AMX on x86, any bf16-capable GPU) they run in bf16
autocast while the document encoder stays exactly as configured; on the development CPU that
takes ``predict_documents`` from 0.791 to 0.871 of the bare encoder's speed at batch 8
(``benchmarks/model_benchmark.py``). The effect on F1 is measured by
``glidre evaluate --head-precision``, which runs the same code path: Re-DocRED test F1 52.28
(fp32 heads) against 52.29 (bf16) with the default model.

``auto`` (the default) picks bf16 only where the hardware has it natively, because emulated
bf16 is slower than fp32. Training follows the same rule through :func:`native_bf16`: the
trainer's ``bf16: true`` means bf16 autocast where it is native and fp32 elsewhere (see
``TrainingConfig.bf16``).
"""

from __future__ import annotations

import functools

import torch

HEAD_PRECISIONS = ("auto", "float32", "bfloat16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 dot products natively (Linux cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` runs bf16 matrix products natively (a bf16-capable GPU, or a CPU with
    AVX512-BF16/AMX). Elsewhere bf16 is emulated: measured on a 2-core AVX2 AMD EPYC, a default-model
    training step ran at 0.25 docs/s under bf16 autocast against 3.28 docs/s in fp32 (13x slower;
    ``benchmarks/train_throughput.py --bf16 on|off``)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def _fixed(precision: str, what: str) -> torch.dtype | None:
    """The dtype ``precision`` names, None for ``auto``; an unknown name is an error."""
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"unknown {what} precision {precision!r}; expected one of {', '.join(HEAD_PRECISIONS)}")
    return None


def head_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the heads run in for ``precision`` (one of :data:`HEAD_PRECISIONS`)."""
    fixed = _fixed(precision, "head")
    if fixed is not None:
        return fixed
    return torch.bfloat16 if native_bf16(device) else torch.float32


def encoder_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the document encoder runs in at inference for ``precision``.

    ``auto`` is bf16 on a bf16-capable GPU (where it is the difference between a fraction and the
    whole of the tensor cores) and fp32 on the CPU, where the encoder's numbers stay exactly those
    the default model was evaluated with. ``bfloat16`` forces bf16 autocast anywhere.
    """
    fixed = _fixed(precision, "encoder")
    if fixed is not None:
        return fixed
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
