"""Figures (PNG) of a walk-forward record and of a training history.

matplotlib is imported inside the functions and figures are drawn on an Agg canvas without pyplot, so importing
diffquant neither loads matplotlib nor touches its global backend, and plotting works on a headless machine.
Files are written atomically: a crash leaves the previous figure, never half a PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from diffquant.io import atomic_path


def _figure(rows: int, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.subplots(rows, 1, sharex=True)
    return fig


def _save(fig: Any, path: str | Path) -> None:
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_history(histories: dict[str, list[dict[str, Any]]], path: str | Path) -> None:
    """Per-epoch ``train_loss`` and ``val_sharpe`` of each named run (e.g. one per seed); epochs without
    validation may omit ``val_sharpe`` or hold None."""
    fig = _figure(2, 6.0)
    ax_loss, ax_val = fig.axes
    for name, history in histories.items():
        ax_loss.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], marker=".", lw=1.0, label=name)
        validated = [h for h in history if h.get("val_sharpe") is not None]
        ax_val.plot([h["epoch"] for h in validated], [h["val_sharpe"] for h in validated], marker="o", lw=1.0)
    ax_loss.set_ylabel("train loss")
    ax_loss.legend(loc="upper right", fontsize="small", ncol=2)
    ax_val.axhline(0.0, color="black", lw=0.5)
    ax_val.set_ylabel("val Sharpe")
    ax_val.set_xlabel("epoch")
    _save(fig, path)


def plot_stitched(tracks: dict[str, pd.DataFrame], books: tuple[str, ...], path: str | Path) -> None:
    """One panel per track (the universe book first, then each asset): the equity of each book over the stitched
    out-of-sample bars, fold boundaries as thin vertical lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 2.2 * len(tracks) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(tracks), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, track) in zip(axes, tracks.items(), strict=True):
        for book in [b for b in books if b in track.columns]:
            grey = book == "buy_and_hold"
            ax.plot(
                track["time"],
                (1.0 + track[book]).cumprod(),
                lw=1.0 if grey else 1.3,
                color="grey" if grey else None,
                label=book.replace("_", " "),
            )
        starts = track["time"][track["fold"] != track["fold"].shift()]
        for t in starts.iloc[1:]:
            ax.axvline(t, color="black", lw=0.3, alpha=0.5)
        ax.axhline(1.0, color="black", lw=0.5)
        ax.set_ylabel(name)
    axes[0].legend(loc="upper left", fontsize="small", ncol=len(books))
    axes[0].set_title("stitched out-of-sample equity (each fold trades what was trained and chosen before it)")
    _save(fig, path)


def plot_fold_heatmap(table: pd.DataFrame, value: str, path: str | Path) -> None:
    """Asset x fold heat map of ``value`` (e.g. the policy's test Sharpe minus buy-and-hold's), centred on zero."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = table.pivot(index="asset", columns="fold", values=value)
    fig = Figure(figsize=(max(6.0, 0.7 * grid.shape[1] + 3), 0.45 * grid.shape[0] + 1.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    limit = float(abs(grid).max().max()) or 1.0
    image = ax.imshow(grid.to_numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=60, fontsize="small")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    for (i, j), v in pd.DataFrame(grid.to_numpy()).stack().items():
        ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize="x-small")
    fig.colorbar(image, ax=ax, label=value.replace("_", " "))
    ax.set_title(f"{value.replace('_', ' ')} per asset and test fold (blank: asset left out)")
    _save(fig, path)


def plot_weight_heatmap(weights: pd.DataFrame, path: str | Path, max_columns: int = 600) -> None:
    """Asset x time heat map of a book's held weights (columns ``w_<symbol>``), centred on zero; long tracks are
    averaged into at most ``max_columns`` time bins so every bar counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = [c for c in weights.columns if c.startswith("w_")]
    grid = weights[columns].to_numpy(dtype=float).T  # (A, T)
    bins = max(1, -(-grid.shape[1] // max_columns))
    width = grid.shape[1] // bins * bins
    if width:
        grid = grid[:, :width].reshape(len(columns), -1, bins).mean(axis=2)
    fig = Figure(figsize=(11, 0.4 * len(columns) + 1.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    limit = float(abs(grid).max()) if grid.size and abs(grid).max() > 0 else 1.0
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(columns)), [c.removeprefix("w_") for c in columns])
    ticks = range(0, grid.shape[1], max(1, grid.shape[1] // 8))
    ax.set_xticks(list(ticks), [f"{weights['time'].iloc[t * bins]:%Y-%m-%d}" for t in ticks], fontsize="small")
    fig.colorbar(image, ax=ax, label="weight (fraction of equity)")
    ax.set_title("portfolio weights per asset over the stitched out-of-sample bars")
    _save(fig, path)


def plot_asset_contributions(assets: pd.DataFrame, path: str | Path) -> None:
    """Per asset: its contribution to the book's net return (%) and its mean turnover per bar."""
    fig = _figure(2, 5.0)
    ax_pnl, ax_turn = fig.axes
    x = range(len(assets))
    ax_pnl.bar(
        x, assets["contribution_pct"], color=["tab:green" if v > 0 else "tab:red" for v in assets["contribution_pct"]]
    )
    ax_pnl.axhline(0.0, color="black", lw=0.5)
    ax_pnl.set_ylabel("net contribution %")
    ax_pnl.set_title("each asset's share of the portfolio's out-of-sample return, and its trading")
    ax_turn.bar(x, assets["turnover"], color="tab:blue")
    ax_turn.set_ylabel("mean |trade| per bar")
    ax_turn.set_xticks(list(x), assets["asset"])
    _save(fig, path)
