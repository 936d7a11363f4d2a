"""Typed configuration: ``params.yaml`` -> frozen dataclasses, validated on load.

Each component receives only its own section (``SimConfig``, ``LossConfig`` ...), never the whole tree, so what a
function depends on is visible in its signature and in the per-key ``params`` of ``dvc.yaml``.

Validation refuses unknown keys, wrong types and out-of-range values with a message that names the dotted key and
what is allowed; cross-field rules (a window longer than a split, a timeframe the source does not divide) are checked
in :meth:`Config.validate`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from diffquant.errors import ConfigError


def _range(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
) -> dict[str, Any]:
    return {"range": (lo, hi, lo_open, hi_open)}


def _f(default: Any, **meta: Any) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


POSITIVE = _range(0.0, lo_open=True)
NON_NEGATIVE = _range(0.0)
PROBABILITY = _range(0.0, 1.0)
OPEN_UNIT = _range(0.0, 1.0, lo_open=True, hi_open=True)

FeaturePreset = Literal["ohlc", "ohlcv", "full", "custom"]
FundingChannel = Literal["last", "mean", "zscore", "to_next", "paid_24h"]
PremiumChannel = Literal["last", "mean"]
MarketChannel = Literal["return", "excess", "reference"]
ColumnTransform = Literal["raw", "log_diff", "zscore"]
SourceName = Literal["bundled", "huggingface", "binance", "file"]
StampConvention = Literal["open_time", "close_time"]
CoreType = Literal["sharpe", "sortino", "calmar", "cdar"]
LossType = Literal["sharpe", "sortino", "calmar", "cdar", "hybrid"]
SERIES_BACKBONES = ("tcn", "vsn_lstm", "linear_attention")  # causal per bar: they also run over a whole series
ModelKind = Literal["single", "portfolio"]
Neutrality = Literal["none", "dollar", "beta"]
RebalanceAt = Literal["bars", "funding"]
BackboneName = Literal["itransformer", "lstm", "patchtst", "dlinear", "tcn", "vsn_lstm", "linear_attention"]


@dataclass(frozen=True)
class HuggingFaceConfig:
    repo_id: str = "ResearchRL/diffquant-data"
    filename: str = "btcusdt_1min_2021_2025.npz"
    revision: str = "main"
    # Upstream's dataset card calls its stamps "close-time" but prints 00:00 -> 23:59: declare it, never guess.
    stamp: StampConvention = "open_time"
    cache_dir: str | None = None
    sha256: str | None = None  # when set, the downloaded file must have this hash


@dataclass(frozen=True)
class BinanceConfig:
    base_url: str = "https://data.binance.vision"
    interval: str = "5m"
    start_month: str = "2024-01"
    end_month: str = "2025-12"
    funding: bool = True


@dataclass(frozen=True)
class DataConfig:
    source: SourceName = "bundled"
    symbol: str = "BTCUSDT"  # the one-asset form, used when ``symbols`` is empty
    symbols: list[str] = _f([])  # a universe; the chain trains and judges every one
    start: str | None = "2024-01-01"  # first bar kept (UTC date); null keeps all the source has
    timeframe_minutes: int = _f(30, **_range(1, 1440))
    path: str | None = None
    funding_path: str | None = None
    mark_path: str | None = None  # file source: mark-price bars (the bar columns), for features.premium
    source_minutes: int = _f(5, **_range(1, 1440))  # only read for data.source == file
    stamp: StampConvention = "open_time"  # only read for data.source == file
    huggingface: HuggingFaceConfig = field(default_factory=HuggingFaceConfig)
    binance: BinanceConfig = field(default_factory=BinanceConfig)

    @property
    def universe(self) -> list[str]:
        """The assets: ``symbols`` (a named set of ``SYMBOL_SETS`` stands for its assets), or ``[symbol]`` when
        that list is empty."""
        return expand_symbols(self.symbols) or [self.symbol]


# The assets of the shipped data that the studies use, named once (docs/walk_forward.md): a name stands for its
# assets wherever a list of symbols is given (data.symbols, features.market.symbols), e.g. -S 'data.symbols=[universe]'.
# tests/data/test_universe_sources.py checks each set against what data_source/bundled ships.
SYMBOL_SETS: dict[str, tuple[str, ...]] = {
    # complete 1-hour bars and funding for 2024-01-01 .. 2025-12-31
    "universe": (
        "BTCUSDT",
        "ETHUSDT",
        "SOLUSDT",
        "BNBUSDT",
        "XRPUSDT",
        "DOGEUSDT",
        "LTCUSDT",
        "ADAUSDT",
        "AVAXUSDT",
        "LINKUSDT",
        "DOTUSDT",
        "ARBUSDT",
    ),
    # complete 1-hour bars and funding from their 2019/2020 listing
    "history": ("BTCUSDT", "ETHUSDT", "XRPUSDT", "LTCUSDT", "ADAUSDT"),
    # 1-hour mark-price bars for 2024-2025 (the premium features)
    "mark": ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "LTCUSDT", "ADAUSDT"),
}


def expand_symbols(symbols: list[str]) -> list[str]:
    """``symbols`` with each set name of ``SYMBOL_SETS`` replaced by its assets, order kept."""
    return [s for item in symbols for s in SYMBOL_SETS.get(item, (item,))]


@dataclass(frozen=True)
class FundingFeatures:
    """Channels from the funding settled at or before each bar's close (``diffquant.data.families.funding``)."""

    channels: list[FundingChannel] = _f([])  # none: the family is off
    mean_settlements: int = _f(3, **_range(1))  # "mean": over the last N settlements (3 = one day at 8 h)
    zscore_settlements: int = _f(90, **_range(2))  # "zscore": the trailing window of settlements (90 = 30 days)
    interval_hours: int = _f(8, **_range(1, 24))  # the longest settlement interval the warm-up must cover


@dataclass(frozen=True)
class PremiumFeatures:
    """log(last close / mark close) per bar and its rolling mean (``diffquant.data.families.premium``)."""

    channels: list[PremiumChannel] = _f([])
    mean_bars: int = _f(24, **_range(1))


@dataclass(frozen=True)
class MarketFeatures:
    """The market on one clock: its equal-weight return, the asset's excess over it, the reference asset's return
    (``diffquant.data.families.market``)."""

    channels: list[MarketChannel] = _f([])
    lookback_bars: int = _f(24, **_range(1))  # k: log returns over the last k bars
    symbols: list[str] = _f([])  # the market (set names allowed); empty: data.symbols, the study's universe
    reference: str = "BTCUSDT"


@dataclass(frozen=True)
class UserColumn:
    """One of the user's own columns of the file source (``diffquant.data.families.columns``)."""

    name: str = ""
    transform: ColumnTransform = "raw"
    window: int = _f(0, **_range(0))  # zscore: bars in the trailing window (>= 2)
    aggregate: Literal["last", "sum"] = "last"  # how source bars combine into a timeframe bar: a level or a flow
    mirror: Literal["keep", "negate"] = "keep"  # its value in the price-reflected market (train.mirror)


@dataclass(frozen=True)
class FeatureConfig:
    preset: FeaturePreset = "ohlcv"
    custom_columns: list[str] = _f([])
    typical_price: bool = False
    rolling_vol: bool = True
    time_features: bool = False
    vol_window: int = _f(12, **_range(1))
    vol_window_vol: int = _f(12, **_range(2))
    funding: FundingFeatures = field(default_factory=FundingFeatures)
    premium: PremiumFeatures = field(default_factory=PremiumFeatures)
    market: MarketFeatures = field(default_factory=MarketFeatures)
    columns: list[UserColumn] = _f([])


@dataclass(frozen=True)
class WindowConfig:
    context: int = _f(96, **_range(2))
    horizon: int = _f(24, **_range(2))
    stride: int = _f(24, **_range(1))


@dataclass(frozen=True)
class SplitConfig:
    """Half-open UTC date ranges: train = [train_start, val_start), ..., backtest = [backtest_start, backtest_end)."""

    train_start: str = "2024-01-01"
    val_start: str = "2025-04-01"
    test_start: str = "2025-07-01"
    backtest_start: str = "2025-10-01"
    backtest_end: str = "2026-01-01"

    def boundaries(self) -> dict[str, tuple[dt.datetime, dt.datetime]]:
        names = ("train_start", "val_start", "test_start", "backtest_start", "backtest_end")
        stamps = [parse_date(getattr(self, n), f"split.{n}") for n in names]
        for i in range(1, len(names)):
            if stamps[i] <= stamps[i - 1]:
                raise ConfigError(
                    f"split.{names[i]} ({stamps[i]:%Y-%m-%d}) must be after split.{names[i - 1]} "
                    f"({stamps[i - 1]:%Y-%m-%d})"
                )
        splits = ("train", "val", "test", "backtest")
        return {s: (stamps[i], stamps[i + 1]) for i, s in enumerate(splits)}


FoldScheme = Literal["single", "expanding", "rolling"]


@dataclass(frozen=True)
class FoldsConfig:
    """Walk-forward folds (``diffquant.folds``). Test windows tile: each fold's test starts where the last ended,
    so the step is ``test_months`` and the tests concatenate into one out-of-sample track.

    ``single`` is the ``split:`` protocol: one train and val, and the test and backtest quarters as two folds.
    """

    scheme: FoldScheme = "single"
    train_start: str = "2024-01-01"  # expanding: where every fold's train window starts
    train_months: int = _f(12, **_range(1))  # rolling: train window length
    val_months: int = _f(3, **_range(1))
    test_months: int = _f(3, **_range(1))
    first_test: str = "2024-07-01"
    last_test_end: str = "2026-01-01"
    embargo_bars: int = _f(0, **_range(0))  # bars dropped between train and val and between val and test


@dataclass(frozen=True)
class ITransformerConfig:
    d_model: int = _f(32, **_range(1))
    n_heads: int = _f(2, **_range(1))
    n_layers: int = _f(4, **_range(1))
    d_ff: int = _f(64, **_range(1))
    dropout: float = _f(0.1, **_range(0.0, 0.9))


@dataclass(frozen=True)
class LSTMConfig:
    hidden: int = _f(64, **_range(1))
    layers: int = _f(2, **_range(1))
    dropout: float = _f(0.2, **_range(0.0, 0.9))
    bidirectional: bool = True


@dataclass(frozen=True)
class PatchTSTConfig:
    patch_len: int = _f(16, **_range(1))
    stride: int = _f(8, **_range(1))
    d_model: int = _f(32, **_range(1))
    n_heads: int = _f(2, **_range(1))
    n_layers: int = _f(3, **_range(1))
    d_ff: int = _f(64, **_range(1))
    dropout: float = _f(0.1, **_range(0.0, 0.9))


@dataclass(frozen=True)
class DLinearConfig:
    kernel: int = _f(25, **_range(1))  # bars in the trailing moving average (the trend)
    d_out: int = _f(32, **_range(1))  # features per channel
    individual: bool = True  # one pair of time maps per channel (False: shared by all channels)


@dataclass(frozen=True)
class TCNConfig:
    channels: int = _f(32, **_range(1))
    levels: int = _f(5, **_range(1))  # residual blocks; block i dilates by 2^i
    kernel: int = _f(3, **_range(2))
    dropout: float = _f(0.1, **_range(0.0, 0.9))


@dataclass(frozen=True)
class VSNLSTMConfig:
    d_model: int = _f(16, **_range(1))  # per-feature embedding and selected input width
    hidden: int = _f(64, **_range(1))
    layers: int = _f(2, **_range(1))
    dropout: float = _f(0.1, **_range(0.0, 0.9))


@dataclass(frozen=True)
class LinearAttentionConfig:
    d_model: int = _f(32, **_range(1))
    n_heads: int = _f(2, **_range(1))
    n_layers: int = _f(4, **_range(1))
    d_ff: int = _f(64, **_range(1))
    conv_kernel: int = _f(4, **_range(1))  # causal depthwise conv before attention: local order, as in H3/Mamba
    dropout: float = _f(0.1, **_range(0.0, 0.9))


@dataclass(frozen=True)
class HeadConfig:
    dense: list[int] = _f([64, 32])
    dropout: float = _f(0.1, **_range(0.0, 0.9))
    tau_dir: float = _f(1.0, **POSITIVE)
    tau_gate: float = _f(1.0, **POSITIVE)
    gate_bias: float = -1.0


@dataclass(frozen=True)
class PortfolioConfig:
    """The portfolio policy's own settings (``model.kind: portfolio``, docs/design_notes.md "Portfolio policy")."""

    leverage: float = _f(1.0, **POSITIVE)  # bound on the gross exposure sum_i |w_i|, met by construction
    d_attn: int = _f(32, **_range(1))  # width of the cross-asset attention
    n_heads: int = _f(2, **_range(1))
    # none; dollar: the weights sum to zero; beta: zero beta against the universe's equal-weight return (causal)
    neutral: Neutrality = "none"
    beta_window: int = _f(0, **_range(0))  # bars in the causal beta estimate (<= window.context - 1); 0: that


@dataclass(frozen=True)
class ModelConfig:
    # single: one position on one asset (each asset of a universe traded alone); portfolio: one book of weights
    # over every asset of data.symbols
    kind: ModelKind = "single"
    portfolio: PortfolioConfig = field(default_factory=PortfolioConfig)
    backbone: BackboneName = "itransformer"
    itransformer: ITransformerConfig = field(default_factory=ITransformerConfig)
    lstm: LSTMConfig = field(default_factory=LSTMConfig)
    patchtst: PatchTSTConfig = field(default_factory=PatchTSTConfig)
    dlinear: DLinearConfig = field(default_factory=DLinearConfig)
    tcn: TCNConfig = field(default_factory=TCNConfig)
    vsn_lstm: VSNLSTMConfig = field(default_factory=VSNLSTMConfig)
    linear_attention: LinearAttentionConfig = field(default_factory=LinearAttentionConfig)
    # Run the backbone causally over each whole episode / series (tcn, vsn_lstm, linear_attention only), each bar
    # z-scored by the trailing window.context bars, instead of once per window (docs/backbones.md, "Series path").
    series: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)
    # Derived by Config.validate from sim (never a params key): the policy's decisions are this many bars apart
    # (sim.rebalance_every / rebalance_at), and its no-trade band is learned above this floor (sim.band_learned).
    decision_every: int = _f(1, **_range(1))
    band_floor: float | None = _f(None, **NON_NEGATIVE)


@dataclass(frozen=True)
class SimConfig:
    commission: float = _f(0.0004, **_range(0.0, 0.1))
    slippage: float = _f(0.0003, **_range(0.0, 0.1))
    smooth_abs_eps: float = _f(1e-6, **POSITIVE)
    impact_eta: float = _f(0.0, **NON_NEGATIVE)
    execution_lag_bars: int = _f(1, **_range(0, 10))
    funding: bool = True
    # Execution (diffquant.sim.execution, docs/execution.md): every default leaves a book as it was.
    rebalance_every: int = _f(1, **_range(1))  # bars between decisions, at closes that are multiples of it (epoch)
    rebalance_at: RebalanceAt = "bars"  # bars: every rebalance_every bars; funding: at the funding stamps
    funding_hours: int = _f(8, **_range(1, 24))  # rebalance_at funding: the stamps' interval from 00:00 UTC
    band: float = _f(0.0, **NON_NEGATIVE)  # no-trade band: only a change's part beyond it (sum |dw|) is traded
    band_learned: bool = False  # the band's width is trained with the policy, band being its floor
    vol_target: float = _f(0.0, **_range(0.0, 10.0))  # annualised volatility the book is scaled to; 0: off
    vol_window: int = _f(0, **_range(0))  # bars in the causal volatility estimate (<= window.context - 1); 0: that
    vol_max_scale: float = _f(2.0, **POSITIVE)  # the volatility scale's cap

    @property
    def cost_rate(self) -> float:
        return self.commission + self.slippage

    def decision_period(self, timeframe_minutes: int) -> int:
        """Bars between decisions: ``rebalance_every``, or the funding interval in bars (``rebalance_at: funding``).

        Raises ``ConfigError`` when the funding interval is not a whole number of bars of ``timeframe_minutes``.
        """
        if self.rebalance_at == "bars":
            return self.rebalance_every
        minutes = self.funding_hours * 60
        if minutes % timeframe_minutes:
            raise ConfigError(
                f"sim.rebalance_at is 'funding' but the {self.funding_hours}-hour funding interval is not a whole "
                f"number of {timeframe_minutes}-minute bars; choose a timeframe that divides it or use "
                "sim.rebalance_every"
            )
        return minutes // timeframe_minutes

    @property
    def plain(self) -> SimConfig:
        """These costs and this cadence without the band and the volatility target: how a rule baseline that
        trades its own targets is priced (buy-and-hold, 1/N)."""
        return dataclasses.replace(self, band=0.0, band_learned=False, vol_target=0.0)


@dataclass(frozen=True)
class LossConfig:
    type: LossType = "hybrid"
    core: CoreType = "sharpe"
    lambda_sharpe: float = _f(1.0, **NON_NEGATIVE)
    lambda_turnover: float = _f(0.01, **NON_NEGATIVE)
    lambda_drawdown: float = _f(0.05, **NON_NEGATIVE)
    lambda_terminal: float = _f(0.01, **NON_NEGATIVE)
    lambda_flat: float = _f(0.5, **NON_NEGATIVE)
    lambda_bias: float = _f(0.25, **NON_NEGATIVE)
    flat_target: float = _f(0.20, **PROBABILITY)
    flat_eps: float = _f(0.05, **POSITIVE)
    flat_k: float = _f(40.0, **POSITIVE)
    lambda_band: float = _f(0.0, **NON_NEGATIVE)
    band_low: float = _f(0.0, **NON_NEGATIVE)
    band_high: float = _f(0.1, **NON_NEGATIVE)
    dd_temperature: float = _f(1000.0, **POSITIVE)
    cdar_alpha: float = _f(0.95, **OPEN_UNIT)
    # Regime weighting of the hybrid's regularisers (docs/losses.md): each episode's lambdas x
    # clip((vol / reference) ** power, min, max), vol the realised volatility of its context bars. 0: off.
    regime_power: float = _f(0.0, **_range(-4.0, 4.0))
    regime_reference: Literal["batch", "fixed"] = "batch"  # the batch's mean context vol, or regime_vol
    regime_vol: float = _f(0.005, **POSITIVE)  # fixed reference: per-bar std of log returns
    regime_min_weight: float = _f(0.25, **POSITIVE)
    regime_max_weight: float = _f(4.0, **POSITIVE)
    eps: float = _f(1e-8, **POSITIVE)


WHERE_UNITS_RUN = ("workers", "grid_address", "gpus_per_unit")  # train keys that never change a trained model
GRID_ADDRESS = re.compile(r"(local|auto|[A-Za-z0-9.-]+:[0-9]{1,5})")


def check_grid_address(address: str, key: str = "train.grid_address") -> None:
    """``""``, ``local``, ``auto`` or ``host:port`` (a Ray cluster's head, as ``ray start --head`` prints it)."""
    if address and not GRID_ADDRESS.fullmatch(address):
        raise ConfigError(
            f"{key}: got {address!r}; use '' (worker processes here, no Ray), 'local' (a Ray runtime on this "
            "machine), 'auto' (the Ray cluster this machine joined) or the head's host:port, e.g. 10.0.0.5:6379"
        )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(30, **_range(1))
    batch_size: int = _f(64, **_range(1))
    lr: float = _f(1e-3, **POSITIVE)
    weight_decay: float = _f(1e-5, **NON_NEGATIVE)
    beta1: float = _f(0.9, **_range(0.0, 1.0))
    beta2: float = _f(0.95, **_range(0.0, 1.0))
    warmup_epochs: int = _f(2, **_range(0))
    warmup_start_factor: float = _f(0.05, **_range(0.0, 1.0, lo_open=True))
    min_lr: float = _f(1e-7, **NON_NEGATIVE)
    grad_clip: float = _f(1.0, **POSITIVE)
    val_freq: int = _f(2, **_range(1))
    select_min_rebalances: int = _f(5, **_range(0))  # a val check with fewer trades can not be "best"
    full_bptt: bool = True
    mirror: bool = True
    mirror_prob: float = _f(0.5, **PROBABILITY)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = _f(0, **_range(0))  # per unit; 0: the driver resolves it (compute.grid.with_unit_threads)
    workers: int = _f(1, **_range(1))  # local worker processes the grid runs on (diffquant.compute.grid)
    grid_address: str = ""  # "": this machine, no Ray; local: a Ray runtime here; auto or host:port: a Ray cluster
    gpus_per_unit: float = _f(1.0, **_range(0.0, 1.0, lo_open=True))  # on Ray: a GPU's share one unit asks for
    seeds: list[int] = field(default_factory=lambda: [42, 43, 44, 45, 46])  # one model per seed
    universe: Literal["pooled", "per_asset"] = "pooled"  # one policy for all assets, or one per asset

    def identity(self) -> dict[str, Any]:
        """The settings that shape trained weights: all but where the grid runs (it gives the same models on any
        number of processes or machines, so a checkpoint or a fold trained elsewhere is still current). The thread
        count stays: it changes the last bits of a result."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in WHERE_UNITS_RUN}


@dataclass(frozen=True)
class Hysteresis:
    """The filter between raw and executed positions (``diffquant.evaluate.hysteresis``).

    ``eval.hysteresis`` is the setting that validation during training trades; threshold-opt tunes one per model on
    val, and evaluate trades those.
    """

    enter_long: float = _f(0.10, **_range(0.0, 1.0))
    enter_short: float = _f(0.10, **_range(0.0, 1.0))
    exit: float = _f(0.05, **_range(0.0, 1.0))
    min_delta: float = _f(0.03, **_range(0.0, 2.0))


@dataclass(frozen=True)
class EvalConfig:
    hysteresis: Hysteresis = field(default_factory=Hysteresis)
    checkpoint: Literal["best", "final"] = "best"
    days_per_year: int = _f(365, **_range(1, 366))
    cost_multipliers: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0])  # re-scored cost levels
    prior_trials: int = _f(0, **_range(0))  # configurations tried before these params (HPO); the DSR counts them


@dataclass(frozen=True)
class RegistryConfig:
    """What the evaluate stage publishes (``tracking.study_registry``; gates: ``deploy.gates``): the newest fold's
    policies are registered and aliased ``candidate``; ``champion`` only when every gate passes on the policy's
    stitched out-of-sample track."""

    register: bool = True
    min_psr: float = _f(0.95, **PROBABILITY)  # probabilistic Sharpe ratio above this
    min_dsr: float = _f(0.95, **PROBABILITY)  # deflated Sharpe ratio (every trial counted) above this
    beat_buy_and_hold: bool = True  # and the 95% interval of Sharpe minus buy-and-hold's above zero
    # and the study's SPA p-value (any configuration beats the benchmark) below this; null: no gate
    max_spa_p: float | None = _f(None, **OPEN_UNIT)


@dataclass(frozen=True)
class BaselineConfig:
    """Rules and proxies traded through the same walk-forward engine as the policy."""

    momentum_lookbacks: list[int] = field(default_factory=lambda: [12, 24, 48, 95])  # bars; best on val is kept
    proxy: bool = True  # train the MSE proxy: the same backbone fitted to the next-horizon return
    proxy_batch_windows: int = _f(1536, **_range(1))  # windows per proxy step (= batch_size x horizon by default)
    # the volatility-targeted buy-and-hold and 1/N: their annual target when sim.vol_target is 0 (else sim's)
    vol_target: float = _f(0.5, **_range(0.0, 10.0, lo_open=True))
    carry_assets: int = _f(3, **_range(1))  # cross-sectional carry: long the k lowest funding, short the k highest
    funding_extreme: float = _f(0.0003, **POSITIVE)  # the funding rule: short above +this per interval, long below -


@dataclass(frozen=True)
class ThresholdConfig:
    trials: int = _f(60, **_range(1))
    objective: Literal["sharpe", "sortino", "calmar"] = "sharpe"


@dataclass(frozen=True)
class OptimizeConfig:
    """Hyper-parameter search (``python -m stages.optimize``); not part of ``dvc repro``."""

    trials: int = _f(50, **_range(1))  # finished trials the study aims at, over all workers and machines
    workers: int = _f(1, **_range(1))  # worker processes this command starts
    storage: str = "outputs/optimize/journal.log"  # a file path (Optuna journal) or an SQLAlchemy URL
    study_name: str = ""  # empty: the experiment name
    epochs: int = _f(0, **_range(0))  # training epochs per trial; 0: train.epochs
    pruner_warmup_epochs: int = _f(6, **_range(0))  # no trial is pruned before this epoch


@dataclass(frozen=True)
class Config:
    experiment: str = "itransformer_hybrid"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)

    def validate(self) -> Config:
        """Cross-field rules; returns the config with ``features.market.symbols`` resolved (set names expanded, empty:
        the assets of ``data.symbols``), so every part that builds features reads the same market."""
        self.split.boundaries()
        d = self.data
        if d.start is not None:
            parse_date(d.start, "data.start")
        universe = d.universe
        if len(set(universe)) != len(universe) or any(not s for s in universe):
            raise ConfigError(f"data.symbols must list distinct, non-empty symbols, got {d.symbols}")
        if d.source == "file" and not d.path:
            raise ConfigError("data.source is 'file' but data.path is empty: set data.path to a CSV or parquet file")
        if self.features.preset == "custom" and not self.features.custom_columns:
            raise ConfigError("features.preset is 'custom': list the columns in features.custom_columns")
        self._validate_families()
        self._validate_backbone()
        if not self.model.head.dense or min(self.model.head.dense) < 1:
            raise ConfigError("model.head.dense must list at least one positive layer width, e.g. [64, 32]")
        check_grid_address(self.train.grid_address)
        seeds = self.train.seeds
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"train.seeds must list one or more distinct integers, got {seeds}")
        if not self.eval.cost_multipliers or min(self.eval.cost_multipliers) < 0:
            raise ConfigError(f"eval.cost_multipliers must list non-negative factors, got {self.eval.cost_multipliers}")
        lookbacks = self.baselines.momentum_lookbacks
        if not lookbacks or min(lookbacks) < 1 or max(lookbacks) > self.window.context - 1:
            raise ConfigError(
                f"baselines.momentum_lookbacks must list bar counts in [1, window.context - 1 = "
                f"{self.window.context - 1}] (the returns inside the policy's window: the rule sees no more "
                f"history than the policy), got {lookbacks}"
            )
        if self.loss.band_low > self.loss.band_high:
            raise ConfigError(
                f"loss.band_low ({self.loss.band_low}) must not exceed loss.band_high ({self.loss.band_high})"
            )
        self._validate_regime()
        if self.window.horizon <= self.sim.execution_lag_bars:
            raise ConfigError(
                f"window.horizon ({self.window.horizon}) must exceed sim.execution_lag_bars "
                f"({self.sim.execution_lag_bars}): no decision would ever earn a return"
            )
        cfg = self._with_execution()
        market = cfg.features.market
        if not market.channels:
            return cfg
        resolved = dataclasses.replace(market, symbols=expand_symbols(market.symbols) or cfg.data.universe)
        return dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, market=resolved))

    def _with_execution(self) -> Config:
        """The execution rules (docs/execution.md) checked, ``sim.vol_window`` resolved (0: window.context - 1, the
        returns inside the policy's window, as the baselines' lookbacks; ``model.portfolio.beta_window`` likewise in
        ``make_policy``, so the model section stays as given), and ``model`` with what the policy takes from
        ``sim``: the bars between its decisions and its learned band's floor (derived here, so a checkpoint's spec
        records them)."""
        s, ctx = self.sim, self.window.context
        if s.rebalance_at == "funding" and s.rebalance_every != 1:
            raise ConfigError(
                f"sim.rebalance_every is {s.rebalance_every} but sim.rebalance_at is 'funding', which sets the "
                "cadence itself; set one of them (rebalance_every: 1, or rebalance_at: bars)"
            )
        period = s.decision_period(self.data.timeframe_minutes)
        p = self.model.portfolio
        for key, value in (("sim.vol_window", s.vol_window), ("model.portfolio.beta_window", p.beta_window)):
            if value > ctx - 1 or value == 1:
                raise ConfigError(
                    f"{key} ({value}) must be 2 .. window.context - 1 = {ctx - 1} (or 0 for that): an estimate at a "
                    "decision reads the returns of the bars the policy's window holds"
                )
        if p.neutral != "none" and self.model.kind != "portfolio":
            raise ConfigError(
                f"model.portfolio.neutral is {p.neutral!r} but model.kind is {self.model.kind!r}: only a portfolio's "
                "book can be market-neutral; set model.kind to portfolio or neutral to none"
            )
        floor = s.band if s.band_learned else None
        m = self.model
        for key, given, default, derived in (
            ("decision_every", m.decision_every, 1, period),
            ("band_floor", m.band_floor, None, floor),
        ):
            if given not in (default, derived):
                raise ConfigError(
                    f"model.{key} ({given}) is derived from sim (rebalance_every, rebalance_at, band, band_learned), "
                    f"which give {derived}; leave it out of the params"
                )
        model = dataclasses.replace(m, decision_every=period, band_floor=floor)  # beta_window 0: make_policy
        return dataclasses.replace(self, sim=dataclasses.replace(s, vol_window=s.vol_window or ctx - 1), model=model)

    def _validate_families(self) -> None:
        """The feature families' cross-field rules: channels listed once, a market of two or more assets, user
        columns named once with a window their transform can use, and only from the file source."""
        f = self.features
        for key, channels in (
            ("funding", f.funding.channels),
            ("premium", f.premium.channels),
            ("market", f.market.channels),
        ):
            if len(set(channels)) != len(channels):
                raise ConfigError(f"features.{key}.channels lists a channel twice: {channels}")
        if f.market.channels:
            market = expand_symbols(f.market.symbols) or self.data.universe
            if len(set(market)) != len(market) or len(market) < 2:
                raise ConfigError(
                    f"features.market.channels {f.market.channels} need a market of two or more distinct assets, "
                    f"got {market} (features.market.symbols, else data.symbols); a one-asset study names its "
                    "market in features.market.symbols, e.g. [universe] or [BTCUSDT, ETHUSDT, SOLUSDT]"
                )
        names = [c.name for c in f.columns]
        if f.columns and self.data.source != "file":
            raise ConfigError(
                f"features.columns {names}: the user's own columns come from data.source 'file' (extra columns "
                f"of data.path), but data.source is {self.data.source!r}"
            )
        for i, c in enumerate(f.columns):
            key = f"features.columns[{i}]"
            if not c.name or names.count(c.name) > 1:
                raise ConfigError(f"{key}.name: give each user column a name, once (got {names})")
            if c.transform == "zscore" and c.window < 2:
                raise ConfigError(f"{key}.window is {c.window}: a zscore needs a trailing window of 2 or more bars")
            if c.transform != "zscore" and c.window:
                raise ConfigError(f"{key}.window is {c.window}, but only transform 'zscore' reads a window; set 0")

    def _validate_regime(self) -> None:
        """The regime weighting scales the hybrid's regularisers: a ratio alone has none, so it would do nothing."""
        c = self.loss
        if c.regime_power and c.type != "hybrid":
            raise ConfigError(
                f"loss.regime_power ({c.regime_power}) weights the hybrid's regularisers, but loss.type is "
                f"'{c.type}', which has none; set loss.type to hybrid or loss.regime_power to 0"
            )
        if c.regime_min_weight > c.regime_max_weight:
            raise ConfigError(
                f"loss.regime_min_weight ({c.regime_min_weight}) must not exceed loss.regime_max_weight "
                f"({c.regime_max_weight})"
            )

    def _validate_backbone(self) -> None:
        """The selected backbone's cross-field rules (an unselected section is only type- and range-checked)."""
        name = self.model.backbone
        section = getattr(self.model, name)
        key = f"model.{name}"
        if hasattr(section, "n_heads") and section.d_model % section.n_heads:
            raise ConfigError(
                f"{key}.d_model ({section.d_model}) must be divisible by {key}.n_heads ({section.n_heads})"
            )
        p = self.model.portfolio
        if p.d_attn % p.n_heads:
            raise ConfigError(
                f"model.portfolio.d_attn ({p.d_attn}) must be divisible by model.portfolio.n_heads ({p.n_heads})"
            )
        if self.model.kind == "portfolio" and self.model.series:
            raise ConfigError(
                "model.kind is 'portfolio' but model.series is true: the portfolio policy has the window path only; "
                "set model.series to false"
            )
        if self.model.series and name not in SERIES_BACKBONES:
            raise ConfigError(
                f"model.series is true but model.backbone '{name}' has no series path; "
                f"use one of {', '.join(SERIES_BACKBONES)} or set model.series to false"
            )
        ctx = self.window.context
        if name == "patchtst":
            if section.patch_len > ctx:
                raise ConfigError(f"{key}.patch_len ({section.patch_len}) must not exceed window.context ({ctx})")
            if section.stride > section.patch_len:
                raise ConfigError(
                    f"{key}.stride ({section.stride}) must not exceed {key}.patch_len ({section.patch_len}): "
                    "bars between patches would never be seen"
                )
        if name == "dlinear" and section.kernel > ctx:
            raise ConfigError(f"{key}.kernel ({section.kernel}) must not exceed window.context ({ctx})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_date(value: str, key: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(str(value), "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ConfigError(f"{key}: '{value}' is not a date; write it as YYYY-MM-DD (UTC)") from None


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: got {value!r}, expected {_describe(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return build_section(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, dt.date):  # YAML reads an unquoted 2024-01-01 as a date, which DVC can not parse
            raise ConfigError(f'{key}: write the date in quotes, "{value.isoformat()}" (DVC reads params as text)')
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def _check_range(value: Any, meta: dict[str, Any], key: str) -> None:
    if "range" not in meta or value is None:
        return
    lo, hi, lo_open, hi_open = meta["range"]
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        lo_txt = "-inf" if lo is None else f"{lo}"
        hi_txt = "inf" if hi is None else f"{hi}"
        raise ConfigError(
            f"{key}: {value} is out of range {'(' if lo_open else '['}{lo_txt}, {hi_txt}{')' if hi_open else ']'}"
        )


def build_section(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(where + k for k in unknown)}; allowed here: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
        _check_range(kwargs[name], known[name].metadata, key)
    return cls(**kwargs)


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config`; missing keys take the defaults (upstream's primary experiment)."""
    if not isinstance(raw, dict):
        raise ConfigError("params must be a mapping of sections (data, model, train, ...)")
    return build_section(Config, raw, "").validate()


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw params mapping with dotted keys set (``{"loss.type": "sharpe"}``), as ``dvc exp run -S``
    sets them; :func:`from_dict` then validates the result like any params file."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {part} is not a section")
        node[last] = value
    return out


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content (an empty file is ``{}``); errors name the file."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; run from the repository root or pass the params file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None


def load(path: str | Path = "params.yaml") -> Config:
    """Read and validate ``params.yaml``; errors name the file and the key."""
    raw = read_yaml(path)
    try:
        return from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for MLflow params: {'sim': {'commission': x}} -> {'sim.commission': x}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
