"""PBO by CSCV: a hand-worked case, a brute-force loop, pure noise near 0.5, a planted edge near 0, input errors."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest

from diffquant.study.pbo import probability_of_backtest_overfitting


def test_hand_worked_two_blocks_three_configurations():
    # Blocks: rows 0-1 and 2-3; every block below has population std 1, so its Sharpe is its mean.
    # A: block Sharpes 2, 1. B: 1, 1. C: 0, 2.
    # IS = block 0: A wins (2 > 1 > 0); OOS block 1: A=1 ties B=1 below C=2 -> rank 1.5, ω = 1.5/4, logit ln(3/5).
    # IS = block 1: C wins (2 > 1 = 1); OOS block 0: C=0 is the worst -> rank 1, ω = 1/4, logit ln(1/3).
    returns = np.array([[1.0, 0.0, -1.0], [3.0, 2.0, 1.0], [0.0, 0.0, 1.0], [2.0, 2.0, 3.0]])
    result = probability_of_backtest_overfitting(returns, n_blocks=2)
    assert result.n_combinations == 2
    assert result.n_configurations == 3
    assert result.logits.tolist() == pytest.approx([math.log(3 / 5), math.log(1 / 3)], abs=1e-12)
    assert result.pbo == 1.0
    assert result.to_dict() == {
        "pbo": 1.0,
        "median_logit": pytest.approx((math.log(3 / 5) + math.log(1 / 3)) / 2, abs=1e-12),
        "n_combinations": 2,
        "n_configurations": 3,
        "n_blocks": 2,
    }


def _brute_force_logits(returns: np.ndarray, n_blocks: int) -> list[float]:
    """CSCV by explicit loops over combinations and configurations, Sharpe by np.std on the concatenated rows."""
    blocks = np.array_split(np.arange(len(returns)), n_blocks)
    n = returns.shape[1]
    logits = []
    for chosen in combinations(range(n_blocks), n_blocks // 2):
        is_rows = np.concatenate([blocks[i] for i in chosen])
        oos_rows = np.concatenate([blocks[i] for i in range(n_blocks) if i not in chosen])

        def sharpes(rows: np.ndarray) -> list[float]:
            out = []
            for j in range(n):
                col = returns[rows, j]
                out.append(col.mean() / col.std() if col.std() > 0 else 0.0)
            return out

        is_sr, oos_sr = sharpes(is_rows), sharpes(oos_rows)
        best = is_sr.index(max(is_sr))
        below = sum(s < oos_sr[best] for s in oos_sr)
        equal = sum(s == oos_sr[best] for s in oos_sr)
        omega = (below + (equal + 1) / 2) / (n + 1)
        logits.append(math.log(omega / (1 - omega)))
    return logits


def test_matches_brute_force_with_uneven_blocks_and_a_flat_configuration():
    rng = np.random.default_rng(7)
    returns = rng.normal(0.0, 1.0, size=(11, 4))  # 11 rows in 4 blocks: 3, 3, 3, 2
    returns[:, 2] = 0.0  # a flat configuration: Sharpe 0 everywhere
    result = probability_of_backtest_overfitting(returns, n_blocks=4)
    expected = _brute_force_logits(returns, 4)
    assert result.logits == pytest.approx(expected, abs=1e-9)
    assert result.pbo == np.mean(np.array(expected) <= 0.0)
    assert result.n_combinations == 6


def test_pure_noise_gives_pbo_near_one_half():
    pbos = [
        probability_of_backtest_overfitting(np.random.default_rng(seed).normal(size=(1000, 20)), n_blocks=10).pbo
        for seed in range(10)
    ]
    assert 0.3 < np.mean(pbos) < 0.7


def test_planted_edge_gives_pbo_near_zero():
    rng = np.random.default_rng(3)
    returns = rng.normal(0.0, 1.0, size=(2000, 20))
    returns[:, 5] += 0.3
    result = probability_of_backtest_overfitting(returns, n_blocks=16)
    assert result.n_combinations == 12870
    assert result.pbo < 0.05


@pytest.mark.parametrize(
    ("returns", "n_blocks", "message"),
    [
        (np.zeros((40, 1)), 4, "at least 2"),
        (np.zeros(40), 4, "2-D"),
        (np.zeros((40, 3)), 5, "even"),
        (np.zeros((40, 3)), 0, "even"),
        (np.zeros((7, 3)), 4, "fewer than 2 \\* n_blocks"),
        (np.r_[np.zeros((39, 3)), [[0.0, np.nan, 0.0]]], 4, "NaN"),
    ],
)
def test_input_errors(returns: np.ndarray, n_blocks: int, message: str):
    with pytest.raises(ValueError, match=message):
        probability_of_backtest_overfitting(returns, n_blocks=n_blocks)
