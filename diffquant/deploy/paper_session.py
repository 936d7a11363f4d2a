"""One paper-trading session: load the model, open the ledger, pick the feed, watch it in MLflow, check the result.

The model is an MLflow model URI (``models:/diffquant-<experiment>@candidate``, ``runs:/<run>/policy_ensemble``,
``models:/m-<id>``) or a checkpoint file (one seed, with the params' features, costs and ``eval.hysteresis``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffquant import tracking
from diffquant.config import Config, parse_date
from diffquant.data.contracts import to_ms, validate_bars, validate_funding
from diffquant.deploy.book_bundle import BookBundle
from diffquant.deploy.book_paper import BookPaperTrader, Slot, book_slots, ledger_books
from diffquant.deploy.bundle import PolicyBundle
from diffquant.deploy.feeds import Bar, Stale, backfill, binance, replay, replay_bars
from diffquant.deploy.fold_model import fold_book_bundle, fold_bundle, fold_record, fold_test_window, is_fold
from diffquant.deploy.ledger import Ledger
from diffquant.deploy.paper import MetricsSink, PaperSettings, PaperTrader
from diffquant.errors import ConfigError, DataError
from diffquant.evaluate.member import Member
from diffquant.evaluate.metrics import annualization
from diffquant.io import read_parquet
from diffquant.train import checkpoint

log = logging.getLogger("diffquant.paper")

RECORD_COLUMNS = ("position", "trade", "gross", "commission", "funding", "net", "equity")  # compared with evaluate's


def load_bundle(model: str, cfg: Config, root: Path, symbol: str | None = None) -> PolicyBundle:
    """The bundle behind an MLflow model URI (in the project's MLflow store, ``diffquant.tracking``), a walk-forward
    fold folder (``symbol``'s policy in it), or a one-seed bundle around a checkpoint file."""
    path = root / model
    if is_fold(path):
        if symbol is None:
            raise ConfigError(f"{model} is a walk-forward fold: name the asset to trade (--symbol)")
        return fold_bundle(cfg, path, symbol)[0]
    if path.suffix == ".pt":
        policy = checkpoint.load_policy(path)
        member = Member(path.parent.name or "policy", policy, cfg.eval.hysteresis)
        return PolicyBundle((member,), cfg.features, cfg.data.timeframe_minutes, cfg.sim)
    from diffquant.tracking.models import load_bundle as load_model_bundle  # mlflow only when a URI is given

    return load_model_bundle(model, root)


class MlflowSink:
    """Live metrics of a paper book in an MLflow run, batched (one sqlite transaction per ``every`` bars)."""

    def __init__(self, run: tracking.Run, every: int = 48) -> None:
        self.run, self.every = run, every
        self.pending: list[tuple[int, dict[str, float]]] = []

    def bar(self, index: int, row: dict[str, Any], drawdown: float, rolling_sharpe: float | None) -> None:
        metrics = {"paper_equity": row["equity"], "paper_position": row["position"], "paper_drawdown": drawdown}
        if rolling_sharpe is not None:
            metrics["paper_rolling_sharpe"] = rolling_sharpe
        self.pending.append((index, metrics))
        if len(self.pending) >= self.every:
            self.flush()

    def event(self, kind: str, detail: str) -> None:
        self.flush()
        self.run.set_tags({"paper.last_event": f"{kind}: {detail}"[:5000]})

    def flush(self) -> None:
        """Every pending bar's metrics at once (a few sqlite transactions of ~20 ms, not one per bar)."""
        self.run.log_steps(self.pending)
        self.pending.clear()


@dataclass(frozen=True)
class ReplaySource:
    bars: pd.DataFrame  # canonical bars
    funding: pd.DataFrame | None  # funding events, or None when ``bars`` carries funding_rate


def read_replay(bars_path: Path, funding_path: Path | None) -> ReplaySource:
    """A bars file (parquet or CSV: open_time, OHLCV[, num_trades][, funding_rate]) and optional funding events."""
    frame = read_parquet(bars_path, "a bars file") if bars_path.suffix == ".parquet" else pd.read_csv(bars_path)
    rates = frame.pop("funding_rate") if "funding_rate" in frame.columns else None
    bars = validate_bars(frame, str(bars_path))
    if rates is not None:
        bars["funding_rate"] = pd.to_numeric(rates).to_numpy(np.float64)
    funding = None
    if funding_path is not None:
        funding = validate_funding(read_parquet(funding_path, "the download stage"), str(funding_path))
    return ReplaySource(bars, funding)


def replay_files(root: Path, symbol: str, bars: str | None, funding: str | None) -> tuple[Path, Path | None]:
    """The bars and funding files to replay: as given (``funding`` '' = none), else the data stages' files of
    ``symbol`` (``data_source/bars/<symbol>/bars.parquet``, ``data_source/raw/<symbol>/funding.parquet``)."""
    default_bars = Path("data_source/bars") / symbol / "bars.parquet"
    default_funding = Path("data_source/raw") / symbol / "funding.parquet"
    chosen = default_funding if funding is None else (Path(funding) if funding else None)
    return root / (bars or default_bars), None if chosen is None else root / chosen


def read_record(path: Path, symbol: str | None) -> pd.DataFrame:
    """A record to check a ledger against: an evaluate record CSV, or what a fold booked for ``symbol``."""
    if not is_fold(path):
        return pd.read_csv(path)
    if symbol is None:
        raise ConfigError(f"{path} is a walk-forward fold: name the asset whose record to check (--symbol)")
    return fold_record(path, symbol)


def replay_feed(
    source: ReplaySource,
    bundle: PolicyBundle | BookBundle,
    lag: int,
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
    after: int | None,
    bars_per_second: float,
) -> Iterator[Bar]:
    """The bars of ``[start, end)``, preceded by the ``min_bars + lag`` bars the first decision held at ``start``
    needs: the trader's first decision is then the engine's first one for a quarter starting at ``start``."""
    ms = to_ms(source.bars["open_time"])
    first = 0
    if start is not None:
        first = int(np.searchsorted(ms, start.value // 1_000_000)) - bundle.min_bars - lag
        if first < 0:
            raise DataError(
                f"replay from {start}: the bars file starts {-first} bar(s) too late for the warm-up "
                f"({bundle.min_bars} bars for the first decision, plus the execution lag of {lag})"
            )
    last = len(ms) if end is None else int(np.searchsorted(ms, end.value // 1_000_000))
    bars = replay_bars(source.bars.iloc[first:last], source.funding, bundle.timeframe_minutes)
    return replay(bars, after=after, bars_per_second=bars_per_second)


def book_replay_feed(
    sources: dict[str, ReplaySource], bundle: BookBundle, lag: int, start: pd.Timestamp | None, end: pd.Timestamp | None
) -> Iterator[Slot]:
    """Every asset's ``replay_feed`` (its bars of ``[start, end)`` and the warm-up before them) on one clock: the
    slots a book's paper trader takes (``book_paper.book_slots``)."""
    return book_slots({s: replay_feed(src, bundle, lag, start, end, None, 0.0) for s, src in sources.items()})


def book_ledgers(ledger: str, symbols: Sequence[str]) -> dict[str, Ledger]:
    """A book's ledgers: one SQLite file per asset beside ``ledger`` (``<stem>_<SYMBOL><suffix>``; its folder is
    made)."""
    if "://" in ledger:
        raise ConfigError(f"--ledger {ledger}: a book's ledgers are SQLite files, one per asset; give a file path")
    path = Path(ledger)
    path.parent.mkdir(parents=True, exist_ok=True)
    return {s: Ledger(str(path.with_name(f"{path.stem}_{s}{path.suffix}"))) for s in symbols}


def book_sources(root: Path, symbols: Sequence[str]) -> dict[str, ReplaySource]:
    """Each asset's bars and funding as the data stages keep them (``replay_files``), what a portfolio fold traded."""
    return {s: read_replay(*replay_files(root, s, None, None)) for s in symbols}


def replay_book(
    cfg: Config, root: Path, fold_dir: Path, ledger: str, sink: MetricsSink | None = None
) -> dict[str, pd.DataFrame]:
    """A portfolio fold's book (``fold_book_bundle``) paper-traded over the fold's test window from every asset's
    bars, into one new ledger per asset beside ``ledger``; returns each asset's ledger rows."""
    bundle, _ = fold_book_bundle(cfg, fold_dir)
    ledgers = book_ledgers(ledger, bundle.symbols)
    ann = annualization(bundle.timeframe_minutes, cfg.eval.days_per_year)
    trader = BookPaperTrader(bundle, ledgers, PaperSettings(bundle.sim, ann=ann), sink)
    trader.start(str(fold_dir))
    start, end = fold_test_window(fold_dir)
    lag = bundle.sim.execution_lag_bars
    trader.run(book_replay_feed(book_sources(root, bundle.symbols), bundle, lag, start, end))
    return ledger_books(ledgers)


def live_feed(
    ws_url: str, rest_url: str, symbol: str, bundle: PolicyBundle, lag: int, after: int | None, grace_s: float
) -> Iterator[Bar | Stale]:
    """Binance: warm up from REST klines (a new ledger), then the kline stream."""
    if after is None:
        yield from backfill(rest_url, symbol, bundle.timeframe_minutes, bundle.min_bars + lag)
    yield from binance(ws_url, symbol, bundle.timeframe_minutes, after, bundle.timeframe_minutes * 60 + grace_s)


def compare_with_record(book: pd.DataFrame, record: pd.DataFrame) -> dict[str, float]:
    """Largest absolute difference per column between the ledger and a record on the record's bars: every column of
    an evaluate record, or those a fold keeps (``fold_model.fold_record``: net, commission)."""
    times = to_ms(pd.to_datetime(record["time"], utc=True))
    rows = book.set_index("open_time").reindex(times)
    if rows["close"].isna().any():
        missing = int(rows["close"].isna().sum())
        raise DataError(f"the ledger lacks {missing} of the record's {len(times)} bars: replay the whole quarter")
    columns = [c for c in RECORD_COLUMNS if c in record.columns]
    return {c: float(np.max(np.abs(rows[c].to_numpy() - record[c].to_numpy()))) for c in columns}


def open_session(
    bundle: PolicyBundle, ledger_url: str, settings: PaperSettings, model: str, sink: MetricsSink | None
) -> tuple[PaperTrader, int | None]:
    """A trader on its ledger, resumed when the ledger holds rows; returns it and the last booked bar."""
    trader = PaperTrader(bundle, Ledger(ledger_url), settings, sink)
    return trader, trader.start(model)


@dataclass(frozen=True)
class PaperRequest:
    """What one single-asset paper session trades, from where, into which ledger (the paper command's options)."""

    model: str
    ledger: str  # a SQLite file relative to the project, or a SQLAlchemy URL
    feed: str = "replay"  # replay | binance
    symbol: str | None = None  # a fold's asset; binance: the symbol (default: data.symbol)
    bars: str | None = None  # replay: a bars file (default: the data stages' of the asset)
    funding: str | None = None  # replay: funding events ('' none)
    split: str | None = None  # replay: that quarter of ``split:``
    start: str | None = None  # replay: the first bar the book may hold a position (UTC)
    end: str | None = None  # replay: stop before this bar (UTC)
    pace: float = 0.0  # replay: bars per second (0: full speed)
    ws_url: str = "wss://fstream.binance.com"
    rest_url: str = "https://fapi.binance.com"
    grace: float = 120.0  # binance: seconds past a timeframe before 'stale'
    on_gap: str = "flatten"
    mlflow: bool = True  # live metrics in an MLflow run


def replay_span(cfg: Config, root: Path, req: PaperRequest) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """Replay bounds: ``req.split``'s quarter of the params, ``start`` / ``end``, or a fold model's test window."""
    if req.split:
        start, end = cfg.split.boundaries()[req.split]
        return pd.Timestamp(start), pd.Timestamp(end)
    if not (req.start or req.end) and is_fold(root / req.model):
        return fold_test_window(root / req.model)
    return (
        pd.Timestamp(parse_date(req.start, "--start")) if req.start else None,
        pd.Timestamp(parse_date(req.end, "--end")) if req.end else None,
    )


def trade_paper(cfg: Config, root: Path, req: PaperRequest) -> pd.DataFrame:
    """One session of one asset's model: resumes the ledger, trades the feed until it ends (or Ctrl-C), records
    the run in MLflow, and returns every row the ledger holds."""
    bundle = load_bundle(req.model, cfg, root, req.symbol)
    settings = PaperSettings(bundle.sim, req.on_gap, annualization(bundle.timeframe_minutes, cfg.eval.days_per_year))
    ledger = req.ledger if "://" in req.ledger else str(root / req.ledger)
    if "://" not in req.ledger:
        Path(ledger).parent.mkdir(parents=True, exist_ok=True)
    run = None
    if req.mlflow:
        tags = {"role": "paper", "paper.model": req.model, "paper.feed": req.feed, "paper.ledger": ledger}
        run = tracking.start_run(root, f"paper {req.model}", tags)
    trader, after = open_session(bundle, ledger, settings, req.model, MlflowSink(run) if run else None)
    lag = bundle.sim.execution_lag_bars
    status = "FAILED"
    try:
        if req.feed == "replay":
            start, end = replay_span(cfg, root, req)
            source = read_replay(*replay_files(root, req.symbol or cfg.data.universe[0], req.bars, req.funding))
            feed = replay_feed(source, bundle, lag, start, end, after, req.pace)
        else:
            feed = live_feed(req.ws_url, req.rest_url, req.symbol or cfg.data.symbol, bundle, lag, after, req.grace)
        trader.run(feed)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        log.info("stopped; run the same command again to resume from %s", ledger)
    finally:
        if run is not None:
            trader.sink.flush()
            run.finish(status)
    book = trader.ledger.book()
    log.info("%d bars in %s; equity %.6f", len(book), ledger, book["equity"].iloc[-1] if len(book) else 1.0)
    return book
