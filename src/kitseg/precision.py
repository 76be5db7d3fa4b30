"""One precision switch for training and prediction: ``auto | fp32 | bf16 | fp16``.

``auto`` picks, per device:

- CPU: bf16 autocast where the CPU has Intel AMX-BF16 (detected, not guessed: ``cpu_bf16_units``),
  fp32 elsewhere. A CPU with AVX512-BF16 but no AMX (an AMD EPYC) also runs bf16 faster, but there
  torch 2.13's bf16 3D-convolution weight gradient came out non-finite for small inputs (a 2x4x4
  bottleneck: 1-2 of 10 random batches; the tests' tiny recipe hit NaN losses in 4 of 4 seeds, 0 of 4
  in fp32), so ``auto`` keeps fp32 there and ``bf16`` must be asked for; a CPU without either would
  emulate bf16 and run slower;
- CUDA: bf16 autocast where the GPU supports it, else fp16 with a gradient scaler.

Only the network's forward pass runs under autocast. Losses, the softmax and its accumulation, the
sliding-window weight map and the metrics stay fp32 (the network's output is cast to float32 before
any of them), and parameters and checkpoints stay fp32, so a checkpoint trained in one precision
predicts in any other.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from kitseg.errors import KitsegError

CHOICES = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: its name, the autocast dtype (None: fp32) and the device type."""

    name: str  # fp32 | bf16 | fp16
    device_type: str  # cpu | cuda
    reason: str = ""  # why auto chose it (empty when asked for explicitly)

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    @property
    def uses_scaler(self) -> bool:
        """fp16 needs a gradient scaler (on CUDA); bf16 has fp32's range and does not."""
        return self.name == "fp16" and self.device_type == "cuda"

    def autocast(self):
        """The context the network's forward pass runs in (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        return f"precision {self.name} on {self.device_type}" + (f" ({self.reason})" if self.reason else "")


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> tuple[str, ...]:
    """The CPU's native bf16 matrix units: a subset of ("amx_bf16", "avx512_bf16"); empty if none.

    Asks torch's own CPU probe (what oneDNN will use) where it exists, else the kernel's flags."""
    probe = getattr(torch, "cpu", None)
    amx, avx = getattr(probe, "_is_amx_tile_supported", None), getattr(probe, "_is_avx512_bf16_supported", None)
    if amx is not None and avx is not None:
        found = {"amx_bf16": bool(amx()), "avx512_bf16": bool(avx())}
    else:
        flags = _cpuinfo_flags()
        found = {"amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}
    return tuple(k for k, v in found.items() if v)


def resolve_precision(precision: str | Precision | None, device: str | torch.device) -> Precision:
    """``auto | fp32 | bf16 | fp16`` on ``device`` -> a ``Precision``; one-line errors for what cannot run."""
    if isinstance(precision, Precision):
        return precision
    name = (precision or "auto").lower()
    if name not in CHOICES:
        raise KitsegError(f"unknown precision {precision!r}; choose one of {', '.join(CHOICES)}")
    dtype = torch.device(device).type
    if dtype not in ("cpu", "cuda"):
        return Precision("fp32", dtype, "only cpu and cuda have autocast here")
    if name == "auto":
        if dtype == "cuda":
            if torch.cuda.is_bf16_supported():
                return Precision("bf16", "cuda", "auto: the GPU supports bf16")
            return Precision("fp16", "cuda", "auto: no bf16 on this GPU, fp16 with a gradient scaler")
        units = cpu_bf16_units()
        if "amx_bf16" in units:
            return Precision("bf16", "cpu", f"auto: the CPU has {' and '.join(units)}")
        if units:
            return Precision("fp32", "cpu", "auto: the CPU has AVX512-BF16 but no AMX, where bf16 training gradients "
                                            "can turn non-finite (docs/TRAINING.md); --precision bf16 forces it")
        return Precision("fp32", "cpu", "auto: the CPU has no native bf16 units (AMX or AVX512-BF16)")
    if name == "fp16" and dtype == "cpu":
        raise KitsegError("--precision fp16 is for CUDA GPUs; on a CPU use bf16 (or auto)")
    if name == "bf16" and dtype == "cuda" and not torch.cuda.is_bf16_supported():
        raise KitsegError("this GPU does not support bf16; use --precision fp16 (or auto)")
    return Precision(name, dtype)


def as_float(out):
    """A network's output (a tensor, or a deep-supervision list of them) cast to float32."""
    if isinstance(out, (list, tuple)):
        return type(out)(o.float() for o in out)
    return out.float()


__all__ = ["CHOICES", "Precision", "as_float", "cpu_bf16_units", "resolve_precision"]
