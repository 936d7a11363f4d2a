"""``dvc plots show`` writes a page that works offline: the project's HTML template (``.dvc/config``
``plots.html_template``) inlines vega, vega-lite and vega-embed, and the page loads no script from the network."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.repo_copy import REPO, dvc

# What each library's minified UMD build assigns to the page's global object (vega-embed calls vegaEmbed).
GLOBALS = {"vega": ").vega={}", "vega-lite": ").vegaLite={}", "vega-embed": ").vegaEmbed="}
REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)


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


@pytest.mark.slow  # a DVC subprocess: about 2 s of CPU, 4-5 s of wall time on the 2-core CI machine
def test_dvc_plots_show_writes_an_offline_page(tmp_path: Path) -> None:
    """The CSV plots of the project's dvc.yaml, on made-up records, through plain ``dvc plots show``."""
    (tmp_path / ".dvc").mkdir()
    shutil.copy2(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    template = _template()
    target = tmp_path / ".dvc" / template.relative_to(REPO / ".dvc")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template, target)

    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    csv_plots = [p for p in plots if isinstance(p, dict) and next(iter(p)).endswith(".csv")]
    assert csv_plots, "dvc.yaml declares no CSV plot"
    for plot in csv_plots:
        ((path, props),) = plot.items()
        rows = [f"{props['x']},{props['y']}"] + [f"{i},{1.0 + 0.01 * i}" for i in range(5)]
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("\n".join(rows) + "\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": csv_plots}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)

    dvc("plots", "show", cwd=tmp_path, timeout=120)

    page = (tmp_path / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    assert_offline(page)
    assert page.count("vegaEmbed('#") == len(csv_plots)
    # the libraries are defined before the first plot calls vegaEmbed
    assert max(page.index(marker) for marker in GLOBALS.values()) < page.index("vegaEmbed('#")
    # DVC's specs are vega-lite v<major>; the inlined vega-lite must read them
    majors = set(re.findall(r"schema/vega-lite/v(\d+)\.json", page))
    assert majors == {_versions(template.read_text(encoding="utf-8"))["vega-lite"].split(".")[0]}
