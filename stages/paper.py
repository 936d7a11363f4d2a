"""Paper trader (not a DVC stage): a model trades closed bars it has never seen, booked as the walk-forward engine
books them, into a ledger that survives a kill.

    python -m stages.paper --model outputs/evaluate/folds/2025-10-01 --symbol BTCUSDT \
        --check outputs/evaluate/folds/2025-10-01
    python -m stages.paper --model outputs/evaluate/folds/2025-10-01 --check outputs/evaluate/folds/2025-10-01  # a book
    python -m stages.paper --model models:/diffquant-itransformer_hybrid-BTCUSDT@candidate --split backtest
    python -m stages.paper --model models:/diffquant-itransformer_hybrid-BTCUSDT@champion --feed binance
    python -m stages.paper --model outputs/train/pooled/<digest>/seed_42/best.pt --bars my_bars.csv --pace 2

A fold of the evaluate stage as the model replays its test window of the asset's bars (the aggregate stage's);
``--check`` with the fold (or a record CSV of yours) prints how far the ledger is from what the fold booked (exit
code 1 beyond ``--tolerance``). Run it again on the same ledger and it resumes where it stopped. See
docs/paper_trading.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from diffquant import tracking
from diffquant.config import Config, parse_date
from diffquant.deploy.book_paper import compare_book
from diffquant.deploy.fold_model import fold_book_record, fold_test_window, is_fold
from diffquant.deploy.paper import PaperSettings
from diffquant.deploy.paper_session import (
    MlflowSink,
    compare_with_record,
    live_feed,
    load_bundle,
    open_session,
    read_record,
    read_replay,
    replay_book,
    replay_feed,
    replay_files,
)
from diffquant.evaluate.metrics import annualization
from stages._cli import load_params, one_asset, parser, repo_root, run_stage

log = logging.getLogger("diffquant.stages.paper")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, runs:/RUN/NAME, models:/m-ID, a .pt file, or a fold folder"
    )
    p.add_argument("--feed", choices=("replay", "binance"), default="replay")
    p.add_argument("--bars", help="replay: bars file, parquet or CSV (default: the shipped data of the model)")
    p.add_argument("--funding", help="replay: funding events ('' none; default: the shipped data of the model)")
    p.add_argument("--split", choices=("val", "test", "backtest"), help="replay: that quarter of params.yaml")
    p.add_argument("--start", help="replay: first bar the book may hold a position (UTC)")
    p.add_argument("--end", help="replay: stop before this bar (UTC)")
    p.add_argument("--pace", type=float, default=0.0, help="replay: bars per second (0: full speed)")
    p.add_argument("--symbol", default=None, help="a fold's asset; binance: symbol (default: data.symbol)")
    p.add_argument("--ws-url", default="wss://fstream.binance.com", help="binance: stream base URL")
    p.add_argument("--rest-url", default="https://fapi.binance.com", help="binance: REST base URL (warm-up)")
    p.add_argument("--grace", type=float, default=120.0, help="binance: seconds past a timeframe before 'stale'")
    p.add_argument("--ledger", default="outputs/paper/ledger.db", help="SQLite file or SQLAlchemy URL")
    p.add_argument("--on-gap", choices=("flatten", "pause"), default="flatten")
    p.add_argument("--no-mlflow", action="store_true", help="do not log live metrics to MLflow")
    p.add_argument("--check", help="an evaluate record CSV, or a fold folder, to compare the ledger with")
    p.add_argument("--tolerance", type=float, default=1e-6, help="--check: largest difference accepted")
    args = p.parse_args(argv)
    root, cfg = repo_root(), load_params(args.params)
    if cfg.model.kind == "portfolio":
        return _book(args, cfg, root)
    cfg = one_asset(cfg)

    bundle = load_bundle(args.model, cfg, root, args.symbol)
    settings = PaperSettings(bundle.sim, args.on_gap, annualization(bundle.timeframe_minutes, cfg.eval.days_per_year))
    if "://" not in args.ledger:
        (root / args.ledger).parent.mkdir(parents=True, exist_ok=True)
    ledger = args.ledger if "://" in args.ledger else str(root / args.ledger)
    run = None
    if not args.no_mlflow:
        tags = {"role": "paper", "paper.model": args.model, "paper.feed": args.feed, "paper.ledger": ledger}
        run = tracking.start_run(root, f"paper {args.model}", tags)
    trader, after = open_session(bundle, ledger, settings, args.model, MlflowSink(run) if run else None)
    lag = bundle.sim.execution_lag_bars
    status = "FAILED"
    try:
        if args.feed == "replay":
            start, end = _span(cfg, args, root)
            bars, funding = replay_files(root, args.symbol or cfg.data.universe[0], args.bars, args.funding)
            source = read_replay(bars, funding)
            feed = replay_feed(source, bundle, lag, start, end, after, args.pace)
        else:
            symbol = args.symbol or cfg.data.symbol
            feed = live_feed(args.ws_url, args.rest_url, symbol, bundle, lag, after, args.grace)
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
    if args.check:
        worst = compare_with_record(book, read_record(root / args.check, args.symbol))
        report_check(worst, 12, args, ("the ledger differs", "ledger equals"))


def _book(args: argparse.Namespace, cfg: Config, root: Path) -> None:
    """A portfolio fold's book replayed over its test window, a ledger per asset beside --ledger."""
    books = replay_book(cfg, root, root / args.model, str(root / args.ledger))
    log.info(
        "%d slots of %s booked into one ledger per asset beside %s",
        len(books[next(iter(books))]),
        args.model,
        args.ledger,
    )
    if args.check:
        worst = compare_book(books, fold_book_record(root / args.check))
        report_check(worst, 24, args, ("the ledgers differ", "ledgers equal"))


def report_check(worst: dict[str, float], width: int, args: argparse.Namespace, words: tuple[str, str]) -> None:
    """Print the largest difference per column; exit 1 beyond ``--tolerance``, else say the ledger(s) equal."""
    for column, diff in worst.items():
        print(f"{column:>{width}}: largest difference {diff:.3e}")
    if max(worst.values()) > args.tolerance:
        log.error("%s from %s by more than %g", words[0], args.check, args.tolerance)
        sys.exit(1)
    print(f"{words[1]} {args.check} within {args.tolerance:g}")


def _span(cfg: Config, args: argparse.Namespace, root: Path) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """Replay bounds: --split's quarter of params.yaml, --start / --end, or a fold model's test window."""
    if args.split:
        start, end = cfg.split.boundaries()[args.split]
        return pd.Timestamp(start), pd.Timestamp(end)
    if not (args.start or args.end) and is_fold(root / args.model):
        return fold_test_window(root / args.model)
    return (
        pd.Timestamp(parse_date(args.start, "--start")) if args.start else None,
        pd.Timestamp(parse_date(args.end, "--end")) if args.end else None,
    )


if __name__ == "__main__":
    run_stage(main)
