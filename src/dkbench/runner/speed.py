"""The run's speed settings (`speed:` in configs/train.yaml), applied in one place.

Every setting here is part of the config hash: each one can change the numbers a run produces,
not only how fast it gets them.

- `matmul_precision` "high"/"medium" lets float32 matmuls and convolutions use TF32 (10-bit
  mantissa) on Ampere+ GPUs — different rounding, so different results.
- `channels_last` changes which kernels run (oneDNN / cuDNN NHWC paths) and their summation order.
- `compile` fuses kernels (inductor), again a different summation order.
- `cudnn_benchmark` lets cuDNN time several convolution algorithms and keep the fastest. It looks
  like a pure speed flag, but the algorithms round differently and the choice depends on timing
  noise, so two runs of one config may differ; keeping it in the identity means a finished run's
  hash says which regime produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import torch
from torch import nn

from dkbench.errors import UserError

MatmulPrecision = Literal["highest", "high", "medium"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class SpeedConfigError(UserError, ValueError):
    """A `speed.*` value that is not one of the accepted ones."""


@dataclass(frozen=True)
class SpeedSettings:
    cudnn_benchmark: bool = False
    matmul_precision: MatmulPrecision = "highest"
    channels_last: bool = False
    compile: bool = False
    compile_mode: CompileMode = "default"

    @classmethod
    def from_config(cls, node: Any) -> SpeedSettings:
        """From the `speed` node (None → defaults); unknown keys and bad values fail with the fix."""
        values = dict(node or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpeedConfigError(f"unknown speed setting(s) {unknown}: use only {sorted(known)}")
        for key in ("cudnn_benchmark", "channels_last", "compile"):
            if key in values and not isinstance(values[key], bool):
                raise SpeedConfigError(f"speed.{key}={values[key]!r}: set speed.{key}=true or false")
        for key, allowed in (("matmul_precision", get_args(MatmulPrecision)), ("compile_mode", get_args(CompileMode))):
            if key in values and values[key] not in allowed:
                raise SpeedConfigError(f"speed.{key}={values[key]!r}: use one of {list(allowed)}")
        return cls(**values)


def apply_process_settings(speed: SpeedSettings) -> None:
    """Process-wide torch flags. Set on every run, all of them, so that a reused sweep worker
    never carries one cell's settings into the next."""
    torch.backends.cudnn.benchmark = speed.cudnn_benchmark
    # In torch ≥ 2.9 this one call sets the float32 precision of CUDA matmuls, cuDNN convolutions
    # and oneDNN matmuls together; older torch governs cuDNN convolutions by `allow_tf32` only.
    torch.set_float32_matmul_precision(speed.matmul_precision)
    if not hasattr(torch.backends.cudnn, "conv"):
        torch.backends.cudnn.allow_tf32 = speed.matmul_precision != "highest"


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    # 4-D weights (2-D convs) → NHWC, 5-D (3-D convs) → NDHWC; others have no spatial layout
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
    return t.contiguous(memory_format=fmt) if fmt is not None else t


def apply_module_settings(module: nn.Module, speed: SpeedSettings, net_attr: str = "net") -> None:
    """Memory format and compilation of the task module, before the Trainer moves it.

    The memory format survives `.to(device)` (which preserves strides). Compilation is in place
    (`nn.Module.compile`), so state-dict keys stay the same and checkpoints load either way.
    """
    if speed.channels_last:
        module._apply(_channels_last)  # every conv in the module: the network and any strategy heads
    if speed.compile:
        net = getattr(module, net_attr)
        net.compile(mode=speed.compile_mode)
