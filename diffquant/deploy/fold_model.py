"""A walk-forward fold's policy as a bundle: what the study traded on one asset's test window, ready to paper-trade;
or a portfolio fold's book (``fold_book_bundle``).

A fold folder of the evaluate stage (``outputs/evaluate/folds/<fold>``) holds, in ``fold.json``, where each model
group's seeds are (the train stage's folders) and each asset's hysteresis chosen on the fold's val. The
asset's bundle is its group's seeds at ``eval.checkpoint`` with those thresholds: replayed over the fold's test
window, it books what the fold booked (``fold_record``). The newest fold's bundle is the model a study would trade
next.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from diffquant.config import Config
from diffquant.deploy.book_bundle import BookBundle
from diffquant.deploy.bundle import PolicyBundle
from diffquant.errors import DataError
from diffquant.evaluate.entries import PORTFOLIO
from diffquant.evaluate.member import Member
from diffquant.evaluate.tuned import TunedModel
from diffquant.io import read_parquet
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.study.book_run import WEIGHTS
from diffquant.study.fold_result import FOLD_JSON, load_fold
from diffquant.train import checkpoint
from diffquant.train.layout import checkpoint_path


def is_fold(path: Path) -> bool:
    return (Path(path) / FOLD_JSON).is_file()


def fold_bundle(cfg: Config, fold_dir: Path, symbol: str) -> tuple[PolicyBundle, dict[str, Path]]:
    """``symbol``'s bundle in the fold at ``fold_dir`` (its group's seeds, its val-chosen hysteresis) and the
    members' checkpoint files; ``cfg``: the study's params (features, seeds, costs, ``eval.checkpoint``)."""
    result = load_fold(fold_dir)
    if PORTFOLIO in result.entries:
        raise DataError(
            f"{fold_dir}: a portfolio fold holds one book of {len(result.groups[PORTFOLIO])} assets; the paper trader "
            "trades one asset's policy (a single-asset study's fold)"
        )
    if symbol not in result.entries:
        raise DataError(f"{fold_dir}: no asset {symbol!r} in this fold; it traded {sorted(result.entries)}")
    (group,) = [g for g, assets in result.groups.items() if symbol in assets]
    tuned = result.asset_entries()[symbol].tuned
    if tuned.checkpoint != cfg.eval.checkpoint:
        raise DataError(
            f"{fold_dir}: thresholds tuned for {tuned.checkpoint}.pt but eval.checkpoint is "
            f"{cfg.eval.checkpoint!r}; give the params the study ran with (--params)"
        )
    members, paths = _seeds(cfg, fold_dir / result.models[group], tuned.policy, symbol)
    return PolicyBundle(members, cfg.features, cfg.data.timeframe_minutes, cfg.sim), paths


def fold_test_window(fold_dir: Path) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The fold's test window ``[start, end)``."""
    fold = load_fold(fold_dir).fold
    return pd.Timestamp(fold["test_start"], tz="UTC"), pd.Timestamp(fold["test_end"], tz="UTC")


def fold_record(fold_dir: Path, symbol: str) -> pd.DataFrame:
    """What the fold booked for ``symbol``'s policy ensemble, per test bar: ``time``, ``net``, ``commission`` (the
    columns of an evaluate record a fold keeps)."""
    returns = load_fold(fold_dir).returns
    if symbol not in returns:
        raise DataError(f"{fold_dir}: no asset {symbol!r} in this fold; it traded {sorted(returns)}")
    table = returns[symbol]
    return pd.DataFrame({"time": table["time"], "net": table["policy"], "commission": table["policy_cost"]})


def fold_book_bundle(cfg: Config, fold_dir: Path) -> tuple[BookBundle, dict[str, Path]]:
    """A portfolio fold's book (its seeds at ``eval.checkpoint``, each with its val-book hysteresis) and the
    members' checkpoint files; ``cfg``: the study's params."""
    result = load_fold(fold_dir)
    if PORTFOLIO not in result.entries:
        raise DataError(f"{fold_dir}: not a portfolio fold (it traded {sorted(result.entries)} one by one)")
    folder = fold_dir / result.models[PORTFOLIO]
    members, paths = _seeds(cfg, folder, result.book_entry().tuned.portfolio, PORTFOLIO)
    for member in members:
        if not isinstance(member.policy, PortfolioPolicy):
            raise DataError(f"{paths[member.name]}: not a portfolio policy; give the study's params (model.kind)")
    symbols = tuple(result.groups[PORTFOLIO])
    return BookBundle(members, symbols, cfg.features, cfg.data.timeframe_minutes, cfg.sim), paths


def fold_book_record(fold_dir: Path) -> dict[str, pd.DataFrame]:
    """What a portfolio fold's ensemble held and booked per asset and test slot: ``time``, ``position`` (its
    weight), ``trade`` and ``net`` (``book_run``'s weights table), to check a book's paper ledgers against."""
    result = load_fold(fold_dir)
    if PORTFOLIO not in result.entries:
        raise DataError(f"{fold_dir}: not a portfolio fold (it traded {sorted(result.entries)} one by one)")
    table = read_parquet(Path(fold_dir) / WEIGHTS, "the folds stage")
    return {
        s: pd.DataFrame(
            {"time": table["time"], "position": table[f"w_{s}"], "trade": table[f"trade_{s}"], "net": table[f"net_{s}"]}
        )
        for s in result.groups[PORTFOLIO]
    }


def _seeds(
    cfg: Config, folder: Path, tuned: dict[str, TunedModel], owner: str
) -> tuple[tuple[Member, ...], dict[str, Path]]:
    """A group's seeds (in ``folder``) at ``eval.checkpoint``, each with the hysteresis ``owner`` chose on val,
    and their checkpoint files; a seed of the params the fold did not tune is refused."""
    members, paths = [], {}
    for seed in (str(s) for s in cfg.train.seeds):
        if seed not in tuned:
            raise DataError(f"{folder}: no seed {seed} for {owner} (it has {sorted(tuned)}); give the study's params")
        name = f"seed_{seed}"
        paths[name] = checkpoint_path(folder, seed, cfg.eval.checkpoint)
        members.append(Member(name, checkpoint.load_policy(paths[name]), tuned[seed].hysteresis))
    return tuple(members), paths
