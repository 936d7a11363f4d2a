"""The floating-point mode every training and decision runs in: subnormal floats flushed to zero.

Trained weights produce some subnormal floats; on CPUs without flush-to-zero they make matmuls ~1.5x slower, and
values below 1e-38 carry no information for a policy. But the mode changes results in their last bits, so a model
must decide in the mode it was judged in. The stages set it for their whole process (``stages._cli.run_stage``);
code that runs inside someone else's process (a grid worker's unit, a served or paper-traded model) sets it for its
own work and gives the caller's mode back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def flushes_denormals() -> bool:
    """Whether this thread's CPU flushes subnormal floats to zero (``torch.set_flush_denormal`` has no getter)."""
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush subnormals to zero inside the block; restore the caller's mode after, whatever happens."""
    flushing = flushes_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(flushing)
