"""The champion's gates: what a model must show out of sample before the registry calls it ``champion``.

The evaluate stage judges the seed ensemble on its gate quarter; a walk-forward study judges each policy (an asset's,
or the portfolio's book) on its stitched out-of-sample track: every fold's test window, each traded by the models
trained before it, the record of the procedure that made the newest model. Pure functions: publishing them is
``diffquant.tracking.registry``'s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from diffquant.config import RegistryConfig


@dataclass(frozen=True)
class Gate:
    key: str  # psr, dsr, beats_buy_and_hold, spa: the model version's tag is gate.<key>
    label: str
    value: float | None
    threshold: float
    passed: bool
    below: bool = False  # the value must lie below the threshold (a p-value), not above it

    def describe(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.3f}"
        sign = "<" if self.below else ">"
        return f"{self.label} {shown} {sign if self.passed else f'is not {sign}'} {self.threshold:g}"


def registered_name(experiment: str) -> str:
    return f"diffquant-{experiment}"


def judge_gates(
    psr: float | None, dsr: float | None, minus_benchmark_low: float | None, cfg: RegistryConfig
) -> list[Gate]:
    """The champion's gates on a book's PSR, DSR and the low end of its Sharpe-minus-benchmark interval (a policy's
    stitched track, in ``study.json``)."""

    def gate(key: str, label: str, value: float | None, threshold: float) -> Gate:
        return Gate(key, label, value, threshold, value is not None and value > threshold)

    gates = [gate("psr", "PSR", psr, cfg.min_psr), gate("dsr", "DSR", dsr, cfg.min_dsr)]
    if cfg.beat_buy_and_hold:
        label = "Sharpe minus buy-and-hold, 95% interval low"
        gates.append(gate("beats_buy_and_hold", label, minus_benchmark_low, 0.0))
    return gates


Verdicts = dict[str, list[Gate]]  # policy name (an asset, or "portfolio" for the book) -> its gates


def model_key(experiment: str, name: str) -> str:
    """What ``registered_name`` turns into ``diffquant-<experiment>-<NAME>`` (an asset, or ``portfolio``)."""
    return f"{experiment}-{name}"


def judge_tracks(
    gated: dict[str, dict[str, Any]], cfg: RegistryConfig, benchmark: str | None = None, spa_p: float | None = None
) -> Verdicts:
    """Each policy's gates on its stitched entry (significance numbers); ``benchmark`` names what the interval of
    the Sharpe difference is taken against when it is not buy-and-hold (a portfolio's: 1/N). With
    ``cfg.max_spa_p``, every policy also needs the study's SPA p-value ``spa_p`` below it: the verdict over the whole
    search (its universe book, or the portfolio's), one number for the study (None, not computable, fails)."""
    verdicts = {}
    for name, entry in gated.items():
        gates = judge_gates(entry["psr"], entry["dsr"], entry["sharpe_minus_benchmark_ci_low"], cfg)
        if benchmark is not None:
            label = f"Sharpe minus {benchmark}'s, 95% interval low"
            gates = [replace(g, label=label) if g.key == "beats_buy_and_hold" else g for g in gates]
        if cfg.max_spa_p is not None:
            label = f"SPA p-value of the study's search against {benchmark or 'buy-and-hold'}"
            passed = spa_p is not None and spa_p < cfg.max_spa_p
            gates.append(Gate("spa", label, spa_p, cfg.max_spa_p, passed, below=True))
        verdicts[name] = gates
    return verdicts


def registry_summary(verdicts: Verdicts, fold: str) -> dict[str, Any]:
    """The verdicts as ``study.json`` keeps them."""
    return {
        "fold": fold,
        "judged_on": "stitched out-of-sample track",
        "policies": {
            s: {
                "champion": all(g.passed for g in gates),
                "gates": [asdict(g) for g in gates],
            }
            for s, gates in verdicts.items()
        },
    }


def registry_markdown(experiment: str, verdicts: Verdicts, fold: str) -> str:
    """The report's registry section: per policy, which gate failed when one did."""
    lines = [
        "## Registry",
        "",
        f"The newest fold's ({fold}) policies are registered as `{registered_name(model_key(experiment, '<NAME>'))}` "
        "(NAME: the asset, or `portfolio` for the book) with the alias `candidate`; `champion` needs every gate to "
        "pass on its stitched out-of-sample track.",
        "",
    ]
    for symbol, gates in verdicts.items():
        failed = [g.describe() for g in gates if not g.passed]
        lines.append(f"- {symbol}: " + (f"not champion (failed: {'; '.join(failed)})" if failed else "champion"))
    return "\n".join([*lines, ""])
