"""Channel attention on the CPU through a small C kernel (``channel_attention.c``), built on first use.

Why C: the iTransformer attends over 6 channel tokens of 16 dims per head, in thousands of windows. As batched
matmuls that is ~6,000 products of 6 x 16 x 6 per call, and MKL's batched GEMM spends ~250 ns of set-up on each: the
attention was a third of a CPU training step for ~4% of its FLOPs. torch's SDPA kernels are slower still at these
shapes, and ``torch.compile`` (1.5-2x here) costs 45-55 s to compile cold and 2-4 s in every new process; a loop
over windows with the tiny products written out is ~2x without either cost (docs/design_notes.md, "Training step
speed"). The forward softmax stays torch's (vectorised exp); its backward is fused into the kernel.

The library is compiled with the system C compiler (``cc``) into a cache folder keyed by the source, the flags, the
compiler and the CPU (``-march=native``), so each machine builds it once (~1 s); processes load it with ``ctypes``.
Where no compiler works the torch path (``itransformer.channel_attention_torch``) is used and a warning says so:
it is the same math, equal to float32 rounding.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("channel_attention.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-fopenmp", "-fPIC", "-shared")
TYPES = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}
CACHE_ENV = "DIFFQUANT_KERNEL_CACHE"  # where built kernels go; default ~/.cache/diffquant/kernels


def available(dtype: torch.dtype) -> bool:
    """Whether the kernel for ``dtype`` is built (or can be): False for other dtypes or without a working compiler."""
    return dtype in TYPES and _library(TYPES[dtype][0]) is not None


def channel_attention_cpu(qkv: Tensor, n_heads: int) -> Tensor:
    """(N, T, 3 d_model) CPU tensor -> (N, T, d_model); needs ``available(qkv.dtype)``."""
    return _KernelAttention.apply(qkv.contiguous(), n_heads)


class _KernelAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, qkv: Tensor, n_heads: int) -> Tensor:
        n, t, d3 = qkv.shape
        e = d3 // 3 // n_heads
        call = _Caller(qkv.dtype, n, t, n_heads, e)
        scores = qkv.new_empty(n_heads, n, t, t)
        call("scores", qkv, scores, scale=e**-0.5)
        probs = torch.softmax(scores, 2)
        out = qkv.new_empty(n, t, d3 // 3)
        call("attend", probs, qkv, out)
        ctx.save_for_backward(qkv, probs)
        ctx.n_heads = n_heads
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        qkv, probs = ctx.saved_tensors
        n, t, d3 = qkv.shape
        e = d3 // 3 // ctx.n_heads
        call = _Caller(qkv.dtype, n, t, ctx.n_heads, e)
        grad = grad.contiguous()
        grad_s = torch.empty_like(probs)  # through the softmax and the 1/sqrt(d_head) scale, as the torch path
        call("grad_scores", qkv, grad, probs, grad_s, scale=e**-0.5)
        grad_qkv = torch.empty_like(qkv)
        call("grad_qkv", qkv, probs, grad_s, grad, grad_qkv)
        return grad_qkv, None


class _Caller:
    """Calls one kernel of the library for ``dtype`` on contiguous tensors, with the shape arguments appended."""

    def __init__(self, dtype: torch.dtype, n: int, t: int, h: int, e: int) -> None:
        name, self.real = TYPES[dtype]
        self.lib = _library(name)
        self.shape = (n, t, h, e)

    def __call__(self, kernel: str, *tensors: Tensor, scale: float | None = None) -> None:
        args: list[Any] = [ctypes.c_void_p(x.data_ptr()) for x in tensors]
        args += [ctypes.c_long(v) for v in self.shape]
        if scale is not None:
            args.append(self.real(scale))
        args.append(ctypes.c_int(torch.get_num_threads()))
        getattr(self.lib, kernel)(*args)


@functools.cache
def _library(real: str) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(str(_build(real)))
    except (OSError, subprocess.CalledProcessError, FileNotFoundError) as exc:
        detail = exc.stderr.decode(errors="replace")[-500:] if isinstance(exc, subprocess.CalledProcessError) else exc
        log.warning("channel attention: the C kernel could not be built (%s); using the torch path", detail)
        return None


def _build(real: str) -> Path:
    """The compiled library for ``real`` in the cache, compiled now when missing (atomically: workers may race)."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise FileNotFoundError("no C compiler (cc) on PATH")
    flags = (*FLAGS, f"-DREAL={real}")
    version = subprocess.run([compiler, "--version"], capture_output=True, check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + repr(flags).encode() + version + _cpu_identity()).hexdigest()[:16]
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffquant" / "kernels")
    target = cache / f"channel_attention_{real}_{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *flags, "-o", str(built), str(SOURCE)], capture_output=True, check=True)
        os.replace(built, target)
    return target


def _cpu_identity() -> bytes:
    """What ``-march=native`` compiles for: the CPU model and its feature flags (the machine name elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor().encode() + platform.machine().encode()
    keep = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep))).encode()
