"""The verdict said plainly: the report's "Verdict" section and the study run's metrics and tags. The numbers come
from ``diffquant.study.verdict``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffquant.evaluate.metric_names import verdict_metric
from diffquant.study.verdict import MCS_SIZE, NOT_COMPUTABLE, SPA_SIZE


@dataclass(frozen=True)
class Labels:
    """How the report names the study's books: ``benchmark`` (buy-and-hold, 1/N), ``headline`` (the policy, the
    portfolio) and the units its pooled difference is the mean over (asset-folds, folds)."""

    benchmark: str
    headline: str
    pooled_over: str


def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names) if names else "none"


def reading(verdict: dict[str, Any], labels: Labels) -> list[str]:
    """One plain sentence per test."""
    spa, mcs, mde, trl = verdict["spa"], verdict["mcs"], verdict["mde"], verdict["mintrl"]
    k, bench, head = len(verdict["strategies"]), labels.benchmark, labels.headline
    lines = []
    if NOT_COMPUTABLE in spa:
        lines.append(f"SPA and StepM: not computable ({spa[NOT_COMPUTABLE]}).")
    else:
        beats = "At least one" if spa["consistent"] < SPA_SIZE else "None"
        lines.append(
            f"{beats} of the {k} strategies beats {bench} in mean net return beyond the luck of trying them all "
            f"(SPA p = {spa['consistent']:.3f}, Reality Check p = {spa['reality_check']:.3f}); StepM, at 5% "
            f"family-wise error, names {_names(spa['stepm'])}."
        )
    if NOT_COMPUTABLE in mcs:
        lines.append(f"Model confidence set: not computable ({mcs[NOT_COMPUTABLE]}).")
    else:
        inside = verdict["in_mcs"]
        lines.append(
            f"The {100 * (1 - MCS_SIZE):.0f}% model confidence set keeps {len(mcs['included'])} of {k + 1}: "
            f"{_names(mcs['included'])}; {bench} is {'in' if inside['benchmark'] else 'out of'} it, {head} is "
            f"{'in' if inside['headline'] else 'out of'} it."
        )
    if NOT_COMPUTABLE in mde:
        lines.append(f"Minimum detectable edge: not computable ({mde[NOT_COMPUTABLE]}).")
    elif mde["p_value"] >= SPA_SIZE:
        lines.append(
            f"No edge of {head} over {bench} larger than about {mde['sharpe']:.2f} Sharpe: one that large would show "
            f"4 times in 5 (80% power at a one-sided 5%); observed {mde['observed']:+.2f}, mean over "
            f"{mde['n_asset_periods']} {labels.pooled_over}."
        )
    else:
        lines.append(
            f"{head[0].upper()}{head[1:]} over {bench}: {mde['observed']:+.2f} Sharpe (mean over "
            f"{mde['n_asset_periods']} {labels.pooled_over}), beyond chance at a one-sided 5%; the study sees edges "
            f"of {mde['sharpe']:.2f} Sharpe and more 4 times in 5."
        )
    if NOT_COMPUTABLE in trl:
        lines.append(f"Minimum track record length: not computable ({trl[NOT_COMPUTABLE]}).")
    elif trl["years"] is None:
        lines.append(
            f"{head[0].upper()}{head[1:]}'s Sharpe ({trl['sharpe']:+.2f}) is not above 0: no track record length "
            "would make it significant."
        )
    else:
        lines.append(
            f"{head[0].upper()}{head[1:]}'s Sharpe of {trl['sharpe']:+.2f} needs {trl['years']:.1f} years of such "
            f"bars to be above 0 at 95% (minimum track record length); the track has {trl['track_years']:.1f}."
        )
    return lines


def _p(part: dict[str, Any], key: str) -> str:
    return "n/a" if NOT_COMPUTABLE in part else f"{part[key]:.3f}"


def verdict_markdown(verdict: dict[str, Any], labels: Labels) -> str:
    """The report's "Verdict" section."""
    spa, mcs, mde, trl = verdict["spa"], verdict["mcs"], verdict["mde"], verdict["mintrl"]
    copies = "; ".join(f"`{a}` = `{b}`" for a, b in verdict["copies"].items())
    lines = [
        f"## Verdict: the whole search against {labels.benchmark}",
        "",
        *[f"- {line}" for line in reading(verdict, labels)],
        "",
        "| test | result |",
        "|---|---|",
        f"| SPA (Hansen), p consistent / lower / upper | {_p(spa, 'consistent')} / {_p(spa, 'lower')} / "
        f"{_p(spa, 'upper')} |",
        f"| Reality Check (White), p | {_p(spa, 'reality_check')} |",
        f"| StepM, 5% family-wise: beat {labels.benchmark} | {_names(spa['stepm']) if 'stepm' in spa else 'n/a'} |",
        f"| model confidence set, {100 * (1 - MCS_SIZE):.0f}% | "
        f"{_names(mcs['included']) if 'included' in mcs else 'n/a'} |",
        f"| minimum detectable edge, Sharpe (80% power, 5% size) | "
        f"{'n/a' if NOT_COMPUTABLE in mde else format(mde['sharpe'], '.2f')} |",
        f"| minimum track record length, years (95%) | "
        f"{'n/a' if NOT_COMPUTABLE in trl or trl['years'] is None else format(trl['years'], '.1f')} |",
        "",
        f"{len(verdict['strategies'])} strategies ranked on {verdict['bars']} bars"
        + (f" (identical returns counted once: {copies})" if copies else "")
        + f". Losses are negative per-bar net returns, so SPA, StepM and the confidence set compare mean returns, not "
        f"Sharpe ratios; stationary bootstrap, mean block {verdict['block_bars']} bars, {verdict['reps']} "
        "replications. The detectable edge is of the pooled Sharpe difference, from the study's joint block "
        "bootstrap (docs/walk_forward.md, Verdict).",
        "",
    ]
    return "\n".join(lines)


def verdict_metrics(verdict: dict[str, Any]) -> dict[str, float | None]:
    """The study run's verdict numbers under ``verdict_metric`` names (None where not computable)."""
    spa, mcs, mde, trl = verdict["spa"], verdict["mcs"], verdict["mde"], verdict["mintrl"]

    def flag(value: bool | None) -> float | None:
        return None if value is None else float(value)

    return {
        verdict_metric("spa_p"): spa.get("consistent"),
        verdict_metric("spa_p_lower"): spa.get("lower"),
        verdict_metric("spa_p_upper"): spa.get("upper"),
        verdict_metric("reality_check_p"): spa.get("reality_check"),
        verdict_metric("stepm_size"): float(len(spa["stepm"])) if "stepm" in spa else None,
        verdict_metric("mcs_size"): float(len(mcs["included"])) if "included" in mcs else None,
        verdict_metric("headline_in_mcs"): flag(verdict["in_mcs"]["headline"]),
        verdict_metric("benchmark_in_mcs"): flag(verdict["in_mcs"]["benchmark"]),
        verdict_metric("mde_sharpe"): mde.get("sharpe"),
        verdict_metric("mintrl_years"): trl.get("years"),
        verdict_metric("strategies"): float(len(verdict["strategies"])),
    }


def verdict_tags(verdict: dict[str, Any]) -> dict[str, str]:
    """The StepM set and the MCS as run tags (names do not fit a metric); ``n/a`` where not computable."""
    spa, mcs = verdict["spa"], verdict["mcs"]
    return {
        "verdict.stepm": ",".join(spa["stepm"]) if "stepm" in spa else "n/a",
        "verdict.mcs": ",".join(mcs["included"]) if "included" in mcs else "n/a",
    }
