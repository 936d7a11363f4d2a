"""Hysteresis: the filter between the policy's raw positions and the positions actually executed.

It is applied after the policy and never fed back into it (the policy's state is its own raw output, see
docs/design_notes.md), so the thresholds can be tuned on val without re-running the network.
"""

from __future__ import annotations

import math

import numpy as np

from diffquant.config import Hysteresis


def apply_hysteresis(raw: np.ndarray, h: Hysteresis, current: float = 0.0) -> np.ndarray:
    """Executed position per bar (N,) from raw decisions (N,), sequentially from the book's ``current`` position
    (flat by default; the paper trader and a served model continue a book).

    Per bar, with ``current`` the executed position so far (the thresholds are the fields of ``h``):

    - target = raw if raw > enter_long, raw if raw < -enter_short, 0 if |raw| < exit (checked in this order);
      otherwise (the dead band) target = current;
    - the book moves to the target only if |target - current| >= min_delta. The rule applies to every move,
      closing included: a position smaller than ``min_delta`` is never closed by the exit rule;
    - a NaN raw (no decision: the window is not full yet) is flat: executed = 0, whatever ``min_delta`` says.

    A plain float loop: the state makes it sequential, and per bar it is a few float comparisons.
    """
    enter_long, enter_short, exit, min_delta = h.enter_long, h.enter_short, h.exit, h.min_delta
    out = np.empty(len(raw))
    current = float(current)
    for i, x in enumerate(np.asarray(raw, dtype=np.float64).tolist()):
        if math.isnan(x):
            current = 0.0
        else:
            if x > enter_long or x < -enter_short:
                target = x
            elif abs(x) < exit:
                target = 0.0
            else:
                target = current
            if abs(target - current) >= min_delta:
                current = target
        out[i] = current
    return out
