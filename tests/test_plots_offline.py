"""``dvc plots show`` writes a page that works offline: the project's HTML template (``.dvc/config``
``plots.html_template``) inlines vega, vega-lite and vega-embed, and the page loads no script from the network.

The per-bar records' ``time`` is text (``2025-07-01 00:00:00+00:00``); under DVC's default ``linear`` template (a
quantitative x) vega-lite drops every row and no line draws, so the record plots use ``.dvc/plots/equity.json``, the
same layers with a temporal x that the template parses from that text."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from diffquant.data.contracts import from_ms
from diffquant.io import write_csv
from tests.repo_copy import REPO, dvc

# What each library's minified UMD build assigns to the page's global object (vega-embed calls vegaEmbed).
GLOBALS = {"vega": ").vega={}", "vega-lite": ").vegaLite={}", "vega-embed": ").vegaEmbed="}
REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
TEMPLATES = REPO / ".dvc" / "plots"  # where DVC looks up a plot's ``template: <name>`` (as <name> or <name>.json)
X = "<DVC_METRIC_X>"  # the anchor DVC fills with the plot's x field


class _Tags(HTMLParser):
    """Every start tag's attributes, and the text of every script element."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def _parse(page: str) -> _Tags:
    tags = _Tags()
    tags.feed(page)
    tags.close()
    return tags


def _template() -> Path:
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    return REPO / ".dvc" / config["plots"]["html_template"]  # DVC reads the path relative to .dvc/


def _versions(template: str) -> dict[str, str]:
    """The version each inlined library's comment names, e.g. ``<!-- vega-lite 5.23.0 (...`` -> 5.23.0."""
    return dict(re.findall(r"<!-- (vega(?:-lite|-embed)?) (\d+\.\d+\.\d+) ", template))


def _record_plots() -> list[tuple[str, dict[str, Any]]]:
    """The CSV plots of dvc.yaml, as (path, properties)."""
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    found = [next(iter(p.items())) for p in plots if isinstance(p, dict) and next(iter(p)).endswith(".csv")]
    assert found, "dvc.yaml declares no CSV plot"
    return found


def _x_encodings(spec: Any) -> list[dict[str, Any]]:
    """Every ``encoding.x`` of a vega-lite spec, its layers included."""
    if isinstance(spec, list):
        return [x for value in spec for x in _x_encodings(value)]
    if not isinstance(spec, dict):
        return []
    x = spec.get("encoding", {}).get("x")
    return ([x] if isinstance(x, dict) else []) + _x_encodings(list(spec.values()))


def _time_format(spec: dict[str, Any], field: str) -> str:
    """The ``strptime`` format of the d3 ``utcParse`` specifier with which the spec's transform parses ``field``."""
    (calc,) = [t for t in spec.get("transform", []) if t.get("as") == field and "calculate" in t]
    (specifier,) = re.findall(r"utcParse\(datum\['" + re.escape(field) + r"'\], '([^']+)'\)", calc["calculate"])
    return specifier.replace("%Z", "%z")  # d3's %Z reads +00:00 and Z, as Python's %z does


def assert_temporal_x(spec: dict[str, Any], field: str) -> None:
    encodings = _x_encodings(spec)
    assert encodings, "the spec has no x encoding"
    assert all(x["field"] == field and x["type"] == "temporal" for x in encodings), encodings
    assert all(x.get("scale", {}).get("type") == "utc" for x in encodings), "the records' times are UTC"


def _records(tmp_path: Path, plots: list[tuple[str, dict[str, Any]]]) -> None:
    """Made-up per-bar records under ``tmp_path``, written as the evaluate stage writes them: UTC time, as text."""
    ms = 1_751_328_000_000 + 300_000 * np.arange(5, dtype=np.int64)  # 2025-07-01 00:00 UTC, 5-minute bars
    for path, props in plots:
        write_csv(tmp_path / path, pd.DataFrame({props["x"]: from_ms(ms), props["y"]: 1.0 + 0.01 * np.arange(5)}))


def assert_offline(page: str) -> None:
    tags = _parse(page)
    remote = [
        (tag, attrs)
        for tag, attrs in tags.tags
        if (tag == "script" and attrs.get("src") is not None)
        or (tag == "link" and REMOTE.match(attrs.get("href") or ""))
        or REMOTE.match(attrs.get("src") or "")
    ]
    assert not remote, f"the page loads from elsewhere: {remote}"
    assert "//cdn" not in page and "jsdelivr" not in page
    code = "\n".join(tags.scripts)
    missing = [name for name, marker in GLOBALS.items() if marker not in code]
    assert not missing, f"not inlined: {missing}"


def test_template_inlines_the_libraries_and_keeps_dvc_scripts_out() -> None:
    template = _template()
    assert template.is_file(), f"plots.html_template in .dvc/config points at {template}, which does not exist"
    text = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in text and "{refresh_tag}" in text
    assert "{scripts}" not in text, "with a {scripts} placeholder DVC would add its CDN script tags"
    assert set(_versions(text)) == set(GLOBALS)
    assert_offline(text)


def test_record_plots_use_a_template_with_a_temporal_x(tmp_path: Path) -> None:
    """Each CSV plot names a template in .dvc/plots whose x is temporal and parses the records' time text."""
    plots = _record_plots()
    _records(tmp_path, plots)
    for path, props in plots:
        assert props.get("template"), f"{path}: DVC's default template reads the text time as a number: no line"
        template = TEMPLATES / f"{props['template']}.json"
        assert template.is_file(), f"{path}: template {props['template']!r} is not in {TEMPLATES}"
        spec = json.loads(template.read_text(encoding="utf-8"))
        assert {"<DVC_METRIC_DATA>", X, "<DVC_METRIC_Y>"} <= set(re.findall(r"<DVC_METRIC_\w+>", json.dumps(spec)))
        assert_temporal_x(spec, X)
        times = pd.read_csv(tmp_path / path, dtype=str)[props["x"]]
        fmt = _time_format(spec, X)
        assert all(datetime.strptime(t, fmt) for t in times), f"{list(times)} do not all match {fmt}"


@pytest.mark.slow  # a DVC subprocess: about 2 s of CPU, 4-5 s of wall time on the 2-core CI machine
def test_dvc_plots_show_writes_an_offline_page(tmp_path: Path) -> None:
    """The CSV plots of the project's dvc.yaml, on made-up records, through plain ``dvc plots show``."""
    (tmp_path / ".dvc").mkdir()
    shutil.copy2(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    template = _template()
    target = tmp_path / ".dvc" / template.relative_to(REPO / ".dvc")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template, target)
    csv_plots = _record_plots()
    for name in {props["template"] for _, props in csv_plots if props.get("template")}:
        shutil.copy2(TEMPLATES / f"{name}.json", tmp_path / ".dvc" / "plots" / f"{name}.json")

    _records(tmp_path, csv_plots)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{path: props} for path, props in csv_plots]}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)

    dvc("plots", "show", cwd=tmp_path, timeout=120)

    page = (tmp_path / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    assert_offline(page)
    assert page.count("vegaEmbed('#") == len(csv_plots)
    assert "<DVC_METRIC_" not in page, "DVC left a template anchor unfilled"
    specs = [
        json.loads(m)
        for script in _parse(page).scripts
        for m in re.findall(r"var spec = (\{.*\});\s*vegaEmbed\(", script, re.DOTALL)
    ]
    assert len(specs) == len(csv_plots)
    for spec, (_, props) in zip(specs, csv_plots, strict=True):  # DVC writes the plots in dvc.yaml's order
        assert_temporal_x(spec, props["x"])
        times = [row[props["x"]] for row in spec["data"]["values"]]
        assert len(times) == 5 and all(datetime.strptime(t, _time_format(spec, props["x"])) for t in times), times
    # the libraries are defined before the first plot calls vegaEmbed
    assert max(page.index(marker) for marker in GLOBALS.values()) < page.index("vegaEmbed('#")
    # DVC's specs are vega-lite v<major>; the inlined vega-lite must read them
    majors = set(re.findall(r"schema/vega-lite/v(\d+)\.json", page))
    assert majors == {_versions(template.read_text(encoding="utf-8"))["vega-lite"].split(".")[0]}
