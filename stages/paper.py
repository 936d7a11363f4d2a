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

from diffquant.deploy.book_paper import compare_book
from diffquant.deploy.fold_model import fold_book_record
from diffquant.deploy.paper_session import PaperRequest, compare_with_record, read_record, replay_book, trade_paper
from stages._cli import load_params, one_asset, parser, repo_root, run_stage

log = logging.getLogger("diffquant.stages.paper")
ASSET_WORDS, BOOK_WORDS = ("the ledger differs", "ledger equals"), ("the ledgers differ", "ledgers equal")


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
    if cfg.model.kind == "portfolio":  # a portfolio fold's book over its test window, a ledger per asset
        books = replay_book(cfg, root, root / args.model, str(root / args.ledger))
        log.info(
            "%d slots of %s booked, one ledger per asset beside %s",
            len(next(iter(books.values()))),
            args.model,
            args.ledger,
        )
        if args.check:
            report_check(compare_book(books, fold_book_record(root / args.check)), 24, args, BOOK_WORDS)
        return
    options = {k: v for k, v in vars(args).items() if k in PaperRequest.__dataclass_fields__}
    book = trade_paper(one_asset(cfg), root, PaperRequest(**options, mlflow=not args.no_mlflow))
    if args.check:
        report_check(compare_with_record(book, read_record(root / args.check, args.symbol)), 12, args, ASSET_WORDS)


def report_check(worst: dict[str, float], width: int, args: argparse.Namespace, words: tuple[str, str]) -> None:
    """Print the largest difference per column; exit 1 beyond ``--tolerance``, else say the ledger(s) equal."""
    for column, diff in worst.items():
        print(f"{column:>{width}}: largest difference {diff:.3e}")
    if max(worst.values()) > args.tolerance:
        log.error("%s from %s by more than %g", words[0], args.check, args.tolerance)
        sys.exit(1)
    print(f"{words[1]} {args.check} within {args.tolerance:g}")


if __name__ == "__main__":
    run_stage(main)
