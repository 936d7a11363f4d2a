"""Look-ahead check: does anything known at a moment change when only the data after that moment changes?

For each cut point T (a bar boundary, Unix ms) the data is built three ways, over the same span of source bars
around T:

- **original**: the source bars and funding events as they are;
- **altered**: every source bar that closes after T replaced by a different but valid bar (the real bars' shapes
  shuffled, mirrored and re-chained from the last close before T, volumes shuffled and rescaled) and every funding
  rate after T changed; so too, for the feature families that read them, the mark-price bars, every market asset's
  bars and the user's columns after T; the stamps stay, so the grid, the gaps and the row count are the same;
- **truncated**: the data ending at T (catches what depends on how much data follows, e.g. a normalisation over
  the whole column, which the altered data, of the same length, might not move).

Each goes through the feature builder (the pipeline's own: aggregate, then every feature family), and the altered one
also through every policy given: raw decision and gate (``policy_decisions``), executed position (hysteresis) and
the walk-forward's held position and net return. A bar counts as "at or before the cut" when it CLOSES at or before
T (a bar's data is known at its close, where the policy decides: docs/design_notes.md), and every such row must be
bit-identical between the original and each variant. Anything else is a leak, reported with the feature channel
or the policy and quantity that moved.

Why exact equality: the features are float32 and the builder does the same arithmetic on the same inputs. The
policy runs on the original and the altered table of the same length, so the backbone's batches have the same
shapes and identical windows give identical outputs (each output row of a matrix product depends only on its own
input row; ``tests/evaluate/test_lookahead.py`` checks that a causal policy passes with tolerance 0). Decisions are
not compared on the truncated data: its batches have other shapes, where a BLAS may legitimately round differently.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffquant.config import Config, Hysteresis
from diffquant.data.contracts import MINUTE_MS, from_ms, to_ms, validate_bars, validate_funding
from diffquant.data.features import FEATURE_PREFIX, feature_columns, features_from_inputs
from diffquant.data.inputs import at_timeframe, feature_inputs, market_bars, read_raw, read_raw_market
from diffquant.data.sources import RawData
from diffquant.data.splits import Series
from diffquant.errors import ConfigError, DataError
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.member import Member
from diffquant.evaluate.walk_forward import Decisions, policy_decisions, walk_forward
from diffquant.io import read_json


@dataclass(frozen=True)
class SourceData:
    """An asset's source data (bars, funding, and its mark bars and user columns when its features read them) and
    the market's assets, each at its source resolution: everything the check alters after a cut."""

    raw: RawData
    market: dict[str, RawData] = field(default_factory=dict)


def read_source_data(raw: Path, cfg: Config) -> SourceData:
    """The download stage's files of the params' asset (and the market's), refused when they were downloaded with
    another ``data.source`` or ``data.symbol``."""
    asset = raw / cfg.data.universe[0]
    meta = read_json(asset / "meta.json", "download")
    stale = [f"data.{k}" for k, want in (("source", cfg.data.source), ("symbol", asset.name)) if meta.get(k) != want]
    if stale:
        raise DataError(
            f"{asset / 'meta.json'}: the data was downloaded with other {', '.join(stale)}; re-run the download "
            "stage (dvc repro download)"
        )
    return SourceData(read_raw(asset, "download"), read_raw_market(raw, cfg.features, "download"))


FeatureBuilder = Callable[[SourceData], pd.DataFrame]
"""source data -> feature table (``open_time``, ``close``, ``funding_rate``, ``x_<name>``...)."""

VARIANTS = ("altered", "truncated")
DEFAULT_CUTS = 5


@dataclass(frozen=True)
class Check:
    """One quantity compared over the bars closing at or before one cut, original data against one variant."""

    cut: str  # ISO time of the cut
    variant: str  # "altered" | "truncated"
    what: str  # "feature rolling_vol", "rows", "seed_42 raw decision", ...
    compared: int  # bars at or before the cut
    changed: int  # of those, how many differ
    first_changed: str | None = None  # open time of the earliest differing bar
    bars_before_cut: int | None = None  # how far before the cut it closes: 0 = the bar closing at the cut
    max_abs_diff: float | None = None  # over differing bars where both values are finite
    nan_mismatch: int = 0  # differing bars where exactly one run has NaN (or one run has no row)

    @property
    def leaks(self) -> bool:
        return self.changed > 0


@dataclass(frozen=True)
class LookaheadReport:
    """Every check of every cut; ``ok`` when nothing at or before any cut changed."""

    cuts: list[str]
    features: list[str]
    policies: list[str]
    checks: list[Check]
    notes: list[str] = field(default_factory=list)

    @property
    def leaks(self) -> list[Check]:
        return [c for c in self.checks if c.leaks]

    @property
    def ok(self) -> bool:
        return not self.leaks

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "cuts": self.cuts,
            "features": self.features,
            "policies": self.policies,
            "notes": self.notes,
            "leaks": [asdict(c) for c in self.leaks],
            "checks": [asdict(c) for c in self.checks],
        }

    def summary(self) -> str:
        """Readable lines: what was checked, one line per cut, then every leak or the all-clear."""
        policies = ", ".join(self.policies) if self.policies else "none"
        lines = [f"look-ahead check: {len(self.cuts)} cut(s); features {', '.join(self.features)}; policies {policies}"]
        lines += [f"  note: {n}" for n in self.notes]
        for cut in self.cuts:
            parts = []
            for variant in VARIANTS:
                mine = [c for c in self.checks if c.cut == cut and c.variant == variant]
                if mine:
                    bad = sum(c.leaks for c in mine)
                    parts.append(f"{variant}: {len(mine) - bad}/{len(mine)} checks unchanged")
            bars = max((c.compared for c in self.checks if c.cut == cut), default=0)
            lines.append(f"  cut {cut}: {bars} bars at or before it; " + "; ".join(parts))
        if self.ok:
            lines.append(f"OK: nothing at or before a cut changed ({len(self.checks)} checks)")
        else:
            lines.append(f"LEAK: {len(self.leaks)} of {len(self.checks)} checks changed at or before a cut")
            by_what: dict[str, list[Check]] = {}
            for c in self.leaks:
                by_what.setdefault(c.what, []).append(c)
            lines += [f"  {_leak_line(what, found, len(self.cuts))}" for what, found in by_what.items()]
            if any(w.startswith(("feature", "column", "rows")) for w in by_what) and self.policies:
                lines.append("  (a policy fed a leaking feature moves with it: fix the features first)")
        return "\n".join(lines)


def _leak_line(what: str, leaks: list[Check], n_cuts: int) -> str:
    """One quantity's leaks over all cuts: how many cuts, how far back before a cut, how much, and an example."""
    cuts = {c.cut for c in leaks}
    variants = [v for v in VARIANTS if any(c.variant == v for c in leaks)]
    reach = max(c.bars_before_cut or 0 for c in leaks)
    where = "only the bar closing at the cut" if reach == 0 else f"as far back as {reach} bar(s) before the cut"
    diffs = [c.max_abs_diff for c in leaks if c.max_abs_diff is not None]
    size = f"max |diff| {max(diffs):.3g}" if diffs else "no finite difference"
    nan = sum(c.nan_mismatch for c in leaks)
    size += f", {nan} bar(s) NaN or missing in one run only" if nan else ""
    e = leaks[0]
    return (
        f"{what} changed at {len(cuts)} of {n_cuts} cut(s) ({', '.join(variants)}): up to "
        f"{max(c.changed for c in leaks)} of {e.compared} bars per cut, {where}; {size}; first: cut {e.cut} "
        f"({e.variant}), bar opening {e.first_changed}"
    )


def pipeline_builder(cfg: Config) -> FeatureBuilder:
    """What the aggregate and features stages do with ``cfg``, as one function of the source data."""
    tf = cfg.data.timeframe_minutes

    def build(data: SourceData) -> pd.DataFrame:
        tables = at_timeframe(data.raw, cfg.features, tf)[0]
        market = market_bars(data.market, tf)
        inputs = feature_inputs(tables, data.raw.funding, tf, market, data.raw.meta.get("symbol", "the asset"))
        return features_from_inputs(inputs, cfg.features, tf)

    return build


def parse_cuts(text: str) -> list[int]:
    """``"2025-03-01T00:00,2025-06-01"`` -> Unix ms; times without a zone are UTC. ``ConfigError`` if unparsable."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            stamp = pd.Timestamp(dt.datetime.fromisoformat(item))  # ISO only: pandas would read "March" too
        except ValueError:
            raise ConfigError(f"--cuts: {item!r} is not a time; give UTC times like 2025-03-01T00:00") from None
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        out.append(int(to_ms(pd.Series([stamp]))[0]))
    return out


def default_cuts(
    bars: pd.DataFrame, source_minutes: int, tf_minutes: int, n: int, before: int, after: int
) -> list[int]:
    """``n`` cuts evenly spread over the data, each ``before`` bars after its start and ``after`` before its end."""
    ms = to_ms(bars["open_time"])
    tf = tf_minutes * MINUTE_MS
    lo = -(-(int(ms[0]) + before * tf) // tf) * tf  # first bar boundary with ``before`` bars of data before it
    hi = int(ms[-1]) + source_minutes * MINUTE_MS - after * tf
    if hi < lo:
        raise ConfigError(
            f"the data ({_iso(ms[0])} .. {_iso(ms[-1])}) is too short for a look-ahead cut: it needs {before} bars of "
            f"{tf_minutes} min before a cut and {after} after; give more data or fewer context bars"
        )
    return sorted({lo + (hi - lo) * (2 * i + 1) // (2 * n) // tf * tf for i in range(n)})


def check_lookahead(
    data: SourceData,
    cfg: Config,
    policies: Sequence[Member] = (),
    cuts: Sequence[int] | None = None,
    *,
    build: FeatureBuilder | None = None,
    n_cuts: int = DEFAULT_CUTS,
    bars_before: int | None = None,
    bars_after: int | None = None,
    seed: int = 0,
) -> LookaheadReport:
    """Run the features (and ``policies``) on the data and on variants changed after each cut; report what moved.

    ``data``: the asset's canonical source tables (``meta["source_minutes"]`` resolution; mark bars at
    ``meta["mark_minutes"]``) and the market's assets. ``cuts``: Unix ms, floored to the ``data.timeframe_minutes``
    grid; default ``n_cuts`` spread over the data. Each cut uses only the ``bars_before`` (default 4 x context) bars
    before it and ``bars_after`` (default 2 x context) after it: a leak of up to ``bars_before + bars_after`` bars
    ahead shows, and a policy pass stays well under a second. ``build`` defaults to the pipeline's own features
    (``pipeline_builder``); ``seed`` drives the alterations. Raises ``ConfigError`` for a cut outside the usable
    data and ``DataError`` when a builder's table has no ``open_time``.
    """
    tf_minutes, ctx, lag = cfg.data.timeframe_minutes, cfg.window.context, cfg.sim.execution_lag_bars
    tf = tf_minutes * MINUTE_MS
    before = bars_before if bars_before is not None else 4 * ctx
    after = bars_after if bars_after is not None else 2 * ctx
    if before < ctx + lag + 2 or after < 1 or n_cuts < 1:
        raise ConfigError(
            f"look-ahead check: bars_before ({before}) must be at least window.context + sim.execution_lag_bars + 2 "
            f"({ctx + lag + 2}), bars_after ({after}) and the number of cuts ({n_cuts}) at least 1"
        )
    build = build or pipeline_builder(cfg)
    bars, source_minutes = data.raw.bars, data.raw.meta["source_minutes"]
    if cuts is None:
        cuts = default_cuts(bars, source_minutes, tf_minutes, n_cuts, before, after)
    cuts = sorted({int(c) // tf * tf for c in cuts})
    ms = to_ms(bars["open_time"])
    checks: list[Check] = []
    names: list[str] = []
    for cut in cuts:
        _check_cut(cut, ms, source_minutes, tf_minutes, ctx + lag + 2)
        span = span_of(data, cut - before * tf, cut + after * tf, tf)
        rng = np.random.default_rng([seed, cut // MINUTE_MS])
        original = build(span)
        names = names or feature_columns(original)
        variants = {"altered": build(alter_after(span, cut, rng)), "truncated": build(truncate_at(span, cut))}
        for variant, table in variants.items():
            checks += compare_tables(original, table, cut, tf, variant)
        for policy in policies:
            checks += compare_policy(policy, original, variants["altered"], cut, cfg)
    return LookaheadReport([_iso(c) for c in cuts], names, [p.name for p in policies], checks)


def span_of(data: SourceData, lo: int, hi: int, tf: int) -> SourceData:
    """Every table of ``data`` cut to the bars opening in [lo, hi) and the funding settled in (lo, hi + tf]."""

    def rows(table: pd.DataFrame | None, column: str = "open_time") -> pd.DataFrame | None:
        if table is None:
            return None
        stamps = to_ms(table[column])
        inside = (stamps >= lo) & (stamps < hi) if column == "open_time" else (stamps > lo) & (stamps <= hi + tf)
        return table[inside].reset_index(drop=True)

    def raw_span(raw: RawData) -> RawData:
        return RawData(rows(raw.bars), rows(raw.funding, "funding_time"), raw.meta, rows(raw.mark), rows(raw.columns))

    return SourceData(raw_span(data.raw), {s: raw_span(r) for s, r in data.market.items()})


def alter_after(data: SourceData, cut: int, rng: np.random.Generator) -> SourceData:
    """``data`` with everything after ``cut`` altered: the asset's bars and funding, its mark bars and user columns,
    and every market asset's bars (the asset's own, where it is one of them, altered once)."""
    raw = data.raw
    minutes = raw.meta["source_minutes"]
    mark = None if raw.mark is None else alter_bars_after(raw.mark, cut, raw.meta["mark_minutes"], rng)
    columns = None if raw.columns is None else alter_columns_after(raw.columns, cut, minutes, rng)
    own = RawData(alter_bars_after(raw.bars, cut, minutes, rng), alter_funding_after(raw.funding, cut, rng), raw.meta)
    own = replace(own, mark=mark, columns=columns)
    symbol = raw.meta.get("symbol")
    market = {
        s: own if s == symbol else replace(r, bars=alter_bars_after(r.bars, cut, r.meta["source_minutes"], rng))
        for s, r in data.market.items()
    }
    return SourceData(own, market)


def _check_cut(cut: int, ms: np.ndarray, source_minutes: int, tf_minutes: int, min_bars: int) -> None:
    """A cut needs ``min_bars`` bars (a full window, the lag and the first bar's dropped row) before it and a bar
    after it to alter."""
    tf = tf_minutes * MINUTE_MS
    end = int(ms[-1]) + source_minutes * MINUTE_MS
    if cut - int(ms[0]) < min_bars * tf or cut + tf > end:
        raise ConfigError(
            f"cut {_iso(cut)} is outside the usable data ({_iso(ms[0])} .. {_iso(end)}): a cut needs {min_bars} bars "
            f"of {tf_minutes} min before it (window.context + sim.execution_lag_bars + 2) and one bar after it"
        )


def alter_bars_after(bars: pd.DataFrame, cut: int, source_minutes: int, rng: np.random.Generator) -> pd.DataFrame:
    """Every source bar closing after ``cut`` replaced by a different but valid one; the stamps stay.

    New bar j takes the shape of a randomly chosen real bar of the altered stretch (gap from the previous close,
    body, wicks), its body mirrored at random and moved by noise of the bodies' size, chained from the last close
    before the cut; volume (and num_trades) from another random bar, times a random factor. Prices stay positive
    and high >= open, close >= low, so the bars pass the contracts (checked).
    """
    ms = to_ms(bars["open_time"])
    first = int(np.searchsorted(ms + source_minutes * MINUTE_MS, cut, side="right"))  # first bar closing after cut
    m = len(bars) - first
    if first == 0 or m == 0:
        raise ConfigError(f"cut {_iso(cut)}: no source bar before or after it to keep or alter")
    o, h, lo, c = (bars[k].to_numpy(np.float64) for k in ("open", "high", "low", "close"))
    prev_close = np.r_[np.nan, c[:-1]]
    s = slice(first, None)
    gap = np.log(o[s] / prev_close[s])
    body = np.log(c[s] / o[s])
    up = np.log(h[s] / np.maximum(o[s], c[s]))
    down = np.log(np.minimum(o[s], c[s]) / lo[s])
    pick = rng.permutation(m)
    noise = rng.normal(0.0, max(float(np.std(body)), 1e-4), m)
    new_body = rng.choice([-1.0, 1.0], m) * body[pick] + noise
    log_close = math.log(c[first - 1]) + np.cumsum(gap[pick] + new_body)
    log_open = log_close - new_body
    new = {
        "open": np.exp(log_open),
        "close": np.exp(log_close),
        "high": np.exp(np.maximum(log_open, log_close) + up[pick]),
        "low": np.exp(np.minimum(log_open, log_close) - down[pick]),
    }
    pick_v = rng.permutation(m)
    factor = np.exp(rng.normal(0.0, 0.5, m))
    for col in ("volume", "num_trades"):
        if col in bars.columns:
            values = bars[col].to_numpy(np.float64)[s][pick_v] * factor
            new[col] = np.round(values) if col == "num_trades" else values
    out = bars.reset_index(drop=True)
    for col, values in new.items():
        out[col] = np.r_[out[col].to_numpy(np.float64)[:first], values]
    return validate_bars(out, "altered bars")


def alter_funding_after(funding: pd.DataFrame, cut: int, rng: np.random.Generator) -> pd.DataFrame:
    """Every funding rate stamped after ``cut`` rescaled, sign-flipped at random and moved by noise."""
    after = to_ms(funding["funding_time"]) > cut
    out = funding.copy()
    rates = out["funding_rate"].to_numpy(np.float64)
    k = int(after.sum())
    spread = max(float(np.std(rates)) if len(rates) else 0.0, 1e-5)
    out.loc[after, "funding_rate"] = rates[after] * rng.uniform(-2.0, 2.0, k) + rng.normal(0.0, spread, k)
    return validate_funding(out, "altered funding")


def truncate_at(data: SourceData, cut: int) -> SourceData:
    """Every table of ``data`` ending at ``cut``: the bars (mark bars, user columns, market bars) closing at or before
    it and the funding settled at or before it."""

    def closed(table: pd.DataFrame | None, minutes: int | None) -> pd.DataFrame | None:
        if table is None:
            return None
        return table[to_ms(table["open_time"]) + int(minutes) * MINUTE_MS <= cut].reset_index(drop=True)

    def cut_raw(raw: RawData) -> RawData:
        minutes = raw.meta["source_minutes"]
        funding = raw.funding[to_ms(raw.funding["funding_time"]) <= cut].reset_index(drop=True)
        mark = closed(raw.mark, raw.meta.get("mark_minutes"))
        return RawData(closed(raw.bars, minutes), funding, raw.meta, mark, closed(raw.columns, minutes))

    return SourceData(cut_raw(data.raw), {s: cut_raw(r) for s, r in data.market.items()})


def alter_columns_after(columns: pd.DataFrame, cut: int, source_minutes: int, rng: np.random.Generator) -> pd.DataFrame:
    """The user's columns of every source bar closing after ``cut`` replaced: each column's values there shuffled and
    scaled by a random factor per row (positive values stay positive, for a log_diff column)."""
    after = to_ms(columns["open_time"]) + source_minutes * MINUTE_MS > cut
    out = columns.copy()
    k = int(after.sum())
    for col in (c for c in columns.columns if c != "open_time"):
        values = columns[col].to_numpy(np.float64)[after]
        out.loc[after, col] = values[rng.permutation(k)] * np.exp(rng.normal(0.0, 0.5, k))
    return out


def compare_tables(original: pd.DataFrame, variant: pd.DataFrame, cut: int, tf: int, name: str) -> list[Check]:
    """Every column of two feature tables over the bars closing at or before ``cut``, aligned by open time.

    ``rows`` counts bars at or before the cut that one table has and the other lacks (a builder that drops rows by
    looking ahead); the columns are compared on the bars both have.
    """
    a, b = (_known_rows(t, cut, tf, name) for t in (original, variant))
    a_ms, b_ms = to_ms(a["open_time"]), to_ms(b["open_time"])
    every = np.union1d(a_ms, b_ms)
    missing = np.isin(every, a_ms) != np.isin(every, b_ms)
    iso = _iso(cut)
    checks = [_check(iso, name, "rows", every, cut, tf, missing, None, int(missing.sum()))]
    common = np.intersect1d(a_ms, b_ms)
    a, b = a.set_axis(a_ms).loc[common], b.set_axis(b_ms).loc[common]
    for col in (c for c in original.columns if c != "open_time"):
        if col not in variant.columns:
            checks.append(Check(iso, name, f"{_label(col)} (missing)", len(common), len(common)))
            continue
        checks.append(_compare(iso, name, _label(col), common, cut, tf, a[col].to_numpy(), b[col].to_numpy()))
    return checks


def compare_policy(member: Member, original: pd.DataFrame, altered: pd.DataFrame, cut: int, cfg: Config) -> list[Check]:
    """A policy end to end on the original and the altered feature table: decisions, hysteresis, walk-forward."""
    tf = cfg.data.timeframe_minutes * MINUTE_MS
    runs = [_policy_run(member, table, cfg) for table in (original, altered)]
    (ta, ra), (tb, rb) = runs
    iso, rows = _iso(cut), _shared_known_rows(ta, tb, cut, tf)
    if rows is None:  # the feature check has already reported different row sets
        return [Check(iso, "altered", f"{member.name} decisions (rows differ, not compared)", 0, 0)]
    times = ta[rows]
    checks = [
        _compare(iso, "altered", f"{member.name} {what}", times, cut, tf, ra[key][rows], rb[key][rows])
        for key, what in (("raw", "raw decision"), ("gate", "gate"), ("executed", "executed position (hysteresis)"))
    ]
    wa, wb = ra["record"], rb["record"]
    known = to_ms(wa["time"]) + tf <= cut
    for key, what in (("position", "walk-forward held position"), ("net", "walk-forward net return")):
        checks.append(
            _compare(
                iso,
                "altered",
                f"{member.name} {what}",
                to_ms(wa["time"])[known],
                cut,
                tf,
                wa[key].to_numpy()[known],
                wb[key].to_numpy()[known],
            )
        )
    return checks


def _policy_run(member: Member, table: pd.DataFrame, cfg: Config) -> tuple[np.ndarray, dict[str, Any]]:
    """Open times (ms) and the policy's raw/gate/executed per bar of ``table`` plus its walk-forward record."""
    names = feature_columns(table)
    if len(names) != member.policy.n_features:
        raise ConfigError(
            f"{member.name} takes {member.policy.n_features} features but the feature table has {len(names)} "
            f"({', '.join(names)}); the policy was trained with other features"
        )
    ms = to_ms(table["open_time"])
    tf = cfg.data.timeframe_minutes * MINUTE_MS
    series = Series(
        features=table[[FEATURE_PREFIX + n for n in names]].to_numpy(np.float32),
        close=np.array(table["close"], dtype=np.float64),  # copies: pandas may hand out read-only views
        funding=np.array(table["funding_rate"], dtype=np.float64),
        open_time=ms,
        start=member.policy.context + cfg.sim.execution_lag_bars,
        timeframe_ms=tf,
        feature_names=names,
    )
    decisions = policy_decisions(member.policy, series)
    executed = executed_positions(decisions, member.hysteresis)
    record = walk_forward(series, executed, cfg.sim, decisions.raw, decisions.gate).record
    return ms, {"raw": decisions.raw, "gate": decisions.gate, "executed": executed, "record": record}


def executed_positions(decisions: Decisions, hysteresis: Hysteresis) -> np.ndarray:
    """The one call of the hysteresis filter (its signature has moved before; keep it in one place)."""
    return apply_hysteresis(decisions.raw, hysteresis)


def _known_rows(table: pd.DataFrame, cut: int, tf: int, name: str) -> pd.DataFrame:
    if "open_time" not in table.columns:
        raise DataError(
            f"the feature builder's {name} table has no open_time column; it must return the table "
            "of build_features (open_time, close, funding_rate, x_<name>...)"
        )
    return table[to_ms(table["open_time"]) + tf <= cut]


def _shared_known_rows(a_ms: np.ndarray, b_ms: np.ndarray, cut: int, tf: int) -> np.ndarray | None:
    """Mask of the rows at or before ``cut`` when both tables have exactly the same bars there, else None."""
    ka, kb = a_ms + tf <= cut, b_ms + tf <= cut
    if not np.array_equal(a_ms[ka], b_ms[kb]) or not np.array_equal(np.flatnonzero(ka), np.flatnonzero(kb)):
        return None
    return ka


def _compare(cut: str, variant: str, what: str, times: np.ndarray, cut_ms: int, tf: int, a: Any, b: Any) -> Check:
    """Bit-exact comparison of two value columns (NaN equals NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    try:
        fa, fb = a.astype(np.float64), b.astype(np.float64)
    except (TypeError, ValueError):  # a non-numeric column: plain equality
        return _check(cut, variant, what, times, cut_ms, tf, a != b, None, 0)
    nan_a, nan_b = np.isnan(fa), np.isnan(fb)
    changed = ~((fa == fb) | (nan_a & nan_b))
    finite = changed & ~nan_a & ~nan_b
    diff = np.abs(fa[finite] - fb[finite])
    max_diff = float(diff.max()) if diff.size and np.isfinite(diff).all() else None
    return _check(cut, variant, what, times, cut_ms, tf, changed, max_diff, int((changed & (nan_a ^ nan_b)).sum()))


def _check(
    cut: str,
    variant: str,
    what: str,
    times: np.ndarray,
    cut_ms: int,
    tf: int,
    changed: np.ndarray,
    max_diff: float | None,
    nan_mismatch: int,
) -> Check:
    idx = np.flatnonzero(changed)
    if not idx.size:
        return Check(cut, variant, what, len(changed), 0)
    first = int(times[idx[0]])
    return Check(
        cut, variant, what, len(changed), len(idx), _iso(first), (cut_ms - first - tf) // tf, max_diff, nan_mismatch
    )


def _label(column: str) -> str:
    """``x_rolling_vol`` -> ``feature rolling_vol``; ``close`` -> ``column close``."""
    if column.startswith(FEATURE_PREFIX):
        return f"feature {column[len(FEATURE_PREFIX) :]}"
    return f"column {column}"


def _iso(ms: int | np.integer) -> str:
    return from_ms(np.array([ms])).iloc[0].strftime("%Y-%m-%dT%H:%MZ")
