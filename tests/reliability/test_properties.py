"""Property-based tests (hypothesis) of the data functions and the simulator's invariants.

Data: aggregation equals a plain per-bucket reference on random valid bars with random holes; ``validate_bars``
refuses any frame with one injected NaN / duplicated stamp / unsorted stamp / non-positive price, naming that row;
features are causal (changing bars after ``t`` changes no feature at or before ``t``).

Simulator: a zero position earns exactly zero gross, commission and funding; commission is never negative (float32
included); funding is paid by longs and received by shorts when the rate is positive; and under the price mirror
``P -> c_ref**2 / P`` (log prices reflected, so simple returns map ``r -> -r / (1 + r)``) the mirrored position
``-x`` has the same log-return exposure ``x * log1p(r)`` and the same costs, while its simple-return gross is
``x * r / (1 + r)``: the simulator's gross is mirror-invariant in log terms, not in simple-return terms.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffquant.config import FeatureConfig, SimConfig
from diffquant.data.aggregate import aggregate
from diffquant.data.contracts import from_ms, to_ms, validate_bars
from diffquant.data.features import build_features
from diffquant.errors import DataError
from diffquant.sim.simulator import bar_returns, simulate

MIN = 60_000
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True)


def random_bars(seed: int, n: int, minutes: int, holes: np.ndarray | None = None, start_slot: int = 0) -> pd.DataFrame:
    """Valid canonical bars on the ``minutes`` grid; rows where ``holes`` is True are left out."""
    rng = np.random.default_rng(seed)
    ms = (28_000_000 + start_slot + np.arange(n, dtype=np.int64)) * minutes * MIN
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]]
    frame = pd.DataFrame(
        {
            "open_time": from_ms(ms),
            "open": open_,
            "high": np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n)),
            "low": np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n)),
            "close": close,
            "volume": rng.exponential(5.0, n) * (rng.random(n) > 0.1),  # some zero-volume bars
        }
    )
    return frame if holes is None else frame[~holes].reset_index(drop=True)


def reference_aggregate(bars: pd.DataFrame, source: int, target: int) -> pd.DataFrame:
    """Plain Python: group rows by epoch bucket, keep buckets holding every source bar."""
    buckets: dict[int, list[int]] = {}
    for i, ms in enumerate(to_ms(bars["open_time"])):
        buckets.setdefault(int(ms) // (target * MIN), []).append(i)
    rows = []
    for bucket, idx in sorted(buckets.items()):
        if len(idx) != target // source:
            continue
        part = bars.iloc[idx]
        rows.append(
            {
                "open_time": bucket * target * MIN,
                "open": part["open"].iloc[0],
                "high": part["high"].max(),
                "low": part["low"].min(),
                "close": part["close"].iloc[-1],
                "volume": part["volume"].sum(),
            }
        )
    return pd.DataFrame(rows, columns=["open_time", "open", "high", "low", "close", "volume"])


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    source=st.sampled_from([1, 5, 15]),
    factor=st.integers(1, 6),
    n=st.integers(1, 150),
    start_slot=st.integers(0, 11),
    hole_share=st.floats(0.0, 0.3),
)
def test_aggregate_equals_a_plain_reference(
    seed: int, source: int, factor: int, n: int, start_slot: int, hole_share: float
) -> None:
    holes = np.random.default_rng(seed + 1).random(n) < hole_share
    holes[0] = False  # at least one bar
    bars = random_bars(seed, n, source, holes, start_slot)
    got, stats = aggregate(bars, source, source * factor)
    want = reference_aggregate(bars, source, source * factor)
    assert stats.buckets_complete == len(got) == len(want)
    np.testing.assert_array_equal(to_ms(got["open_time"]), want["open_time"].to_numpy(dtype=np.int64))
    for col in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(dtype=np.float64), err_msg=col)
    np.testing.assert_allclose(got["volume"].to_numpy(), want["volume"].to_numpy(dtype=np.float64), rtol=1e-12)


FAULTS = ("nan", "inf", "zero_price", "negative_price", "duplicated", "unsorted")


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60), where=st.floats(0, 1), fault=st.sampled_from(FAULTS))
def test_validate_bars_names_the_injected_row(seed: int, n: int, where: float, fault: str) -> None:
    bars = random_bars(seed, n, 5)
    row = 1 + int(where * (n - 2))  # 1 .. n-1: duplicates and swaps need a row before
    col = ("open", "high", "low", "close", "volume")[seed % 5]
    bad = bars.copy()
    if fault in ("nan", "inf"):
        bad.loc[row, col] = np.nan if fault == "nan" else -np.inf
        expected = (
            rf"column {col} is NaN or infinite at row\(s\) {row}$|column {col} is NaN or infinite at row\(s\) {row};"
        )
    elif fault in ("zero_price", "negative_price"):
        col = col if col != "volume" else "close"
        bad.loc[row, col] = 0.0 if fault == "zero_price" else -bars.loc[row, col]
        expected = rf"column {col} is zero or negative at row\(s\) {row};"
    elif fault == "duplicated":
        bad.loc[row, "open_time"] = bars.loc[row - 1, "open_time"]
        expected = rf"duplicated open_time at row\(s\) {row};"
    else:
        bad = bars.iloc[[*range(row - 1), row, row - 1, *range(row + 1, n)]].reset_index(drop=True)
        expected = rf"open_time not increasing at row\(s\) {row};"
    with pytest.raises(DataError, match=expected) as err:
        validate_bars(bad, "bars.csv")
    assert str(err.value).startswith("bars.csv: ")
    assert not re.search(rf"row\(s\) {row}, ", str(err.value))  # that row only
    validate_bars(bars, "bars.csv")  # and the frame without the fault passes


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(3, 80),
    cut=st.floats(0, 1),
    vol_window=st.integers(1, 20),
    vol_window_vol=st.integers(2, 20),
)
def test_features_are_causal(seed: int, n: int, cut: float, vol_window: int, vol_window_vol: int) -> None:
    cfg = FeatureConfig(typical_price=True, time_features=True, vol_window=vol_window, vol_window_vol=vol_window_vol)
    bars = random_bars(seed, n, 30)
    t = 1 + int(cut * (n - 2))  # bars after t change
    rng = np.random.default_rng(seed + 7)
    changed = bars.copy()
    for col in ("open", "high", "low", "close"):
        changed.loc[t + 1 :, col] = bars.loc[t + 1 :, col] * rng.uniform(0.5, 2.0)
    changed.loc[t + 1 :, "volume"] = rng.exponential(50.0, n - t - 1)
    empty = pd.DataFrame({"funding_time": from_ms(np.array([], dtype=np.int64)), "funding_rate": []})
    a = build_features(bars, empty, cfg, 30)
    b = build_features(changed, empty, cfg, 30)
    # feature row r is bar r + 1: rows 0 .. t-1 only see bars 0 .. t
    pd.testing.assert_frame_equal(a.iloc[:t], b.iloc[:t])


# --- simulator -------------------------------------------------------------------------------------------------------

DTYPES = st.sampled_from([torch.float32, torch.float64])
EPS = st.sampled_from([1e-10, 1e-8, 2e-8, 3e-6, 1e-6, 1e-4])


def sim_cfg(eps: float, eta: float, funding: bool = True) -> SimConfig:
    return SimConfig(commission=0.0004, slippage=0.0003, smooth_abs_eps=eps, impact_eta=eta, funding=funding)


def tensors(seed: int, shape: tuple[int, int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions in [-1, 1] (some exactly 0 or repeated), returns in (-0.2, 0.2), funding rates around 1e-4."""
    gen = torch.Generator().manual_seed(seed)
    held = torch.tanh(3 * torch.randn(*shape, generator=gen, dtype=torch.float64))
    held = torch.where(torch.rand(*shape, generator=gen) < 0.3, torch.zeros_like(held), held)
    returns = 0.2 * torch.tanh(torch.randn(*shape, generator=gen, dtype=torch.float64) / 10)
    funding = 3e-4 * torch.randn(*shape, generator=gen, dtype=torch.float64)
    return held.to(dtype), returns.to(dtype), funding.to(dtype)


SHAPES = st.tuples(st.integers(1, 4), st.integers(1, 40))


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=SHAPES, dtype=DTYPES, eps=EPS, eta=st.sampled_from([0.0, 0.01]))
def test_zero_position_earns_exactly_zero(
    seed: int, shape: tuple[int, int], dtype: torch.dtype, eps: float, eta: float
):
    _, returns, funding = tensors(seed, shape, dtype)
    r = simulate(torch.zeros(shape, dtype=dtype), returns, funding, sim_cfg(eps, eta))
    for name in ("gross", "commission", "funding", "net", "trades"):
        assert torch.count_nonzero(getattr(r, name)) == 0, name


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=SHAPES, dtype=DTYPES, eps=EPS, eta=st.sampled_from([0.0, 0.01]))
def test_commission_is_never_negative(
    seed: int, shape: tuple[int, int], dtype: torch.dtype, eps: float, eta: float
) -> None:
    held, returns, funding = tensors(seed, shape, dtype)
    prev = held[:, :1].flatten().flip(0)  # any previous position, sometimes equal to the first
    for exact in (False, True):
        r = simulate(held, returns, funding, sim_cfg(eps, eta), prev_position=prev, exact=exact)
        assert (r.commission >= 0).all(), r.commission.min()
        idle = r.trades == 0
        assert (r.commission[idle] == 0).all()  # a bar without a trade costs exactly nothing


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=SHAPES, dtype=DTYPES)
def test_funding_sign_longs_pay_shorts_receive(seed: int, shape: tuple[int, int], dtype: torch.dtype) -> None:
    held, returns, funding = tensors(seed, shape, dtype)
    r = simulate(held, returns, funding, sim_cfg(1e-6, 0.0))
    paid = torch.sign(r.funding)
    torch.testing.assert_close(paid, torch.sign(held) * torch.sign(funding), rtol=0, atol=0)
    torch.testing.assert_close(
        simulate(-held, returns, funding, sim_cfg(1e-6, 0.0)).funding, -r.funding, rtol=0, atol=0
    )
    off = simulate(held, returns, funding, sim_cfg(1e-6, 0.0, funding=False))
    assert torch.count_nonzero(off.funding) == 0 and torch.equal(off.net, r.gross - r.commission)


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=SHAPES, eps=EPS, eta=st.sampled_from([0.0, 0.01]))
def test_mirrored_prices_and_positions_give_the_same_log_pnl(
    seed: int, shape: tuple[int, int], eps: float, eta: float
) -> None:
    """Prices P -> c_ref**2 / P; positions x -> -x. Exact relations (float64, up to rounding):

    r' = -r / (1 + r);  (-x) * log1p(r') == x * log1p(r);  gross' == gross / (1 + r);  commission' == commission.
    """
    held, returns, funding = tensors(seed, shape, torch.float64)
    close = 100.0 * torch.cumprod(torch.cat([torch.ones(shape[0], 1, dtype=torch.float64), 1 + returns], 1), 1)
    r = bar_returns(close)
    mirrored = bar_returns(close[:, :1] ** 2 / close)
    torch.testing.assert_close(mirrored, -r / (1 + r), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(-held * torch.log1p(mirrored), held * torch.log1p(r), rtol=1e-9, atol=1e-15)

    cfg = sim_cfg(eps, eta, funding=False)
    a = simulate(held, r, funding, cfg)
    b = simulate(-held, mirrored, funding, cfg)
    torch.testing.assert_close(b.gross, a.gross / (1 + r), rtol=1e-9, atol=1e-15)
    assert torch.equal(a.commission, b.commission)  # |dx| is the same trade either way
