"""``mpqbench publish`` (issue #15): the static site of the committed results, read as files and opened in
headless Chromium (Debian's chromium + chromium-driver through selenium; skipped where they are missing).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mpqbench.cli import main
from mpqbench.pipeline.store import RunStore
from mpqbench.report import leaderboard, preview
from mpqbench.report import site as site_builder

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "fashion-mnist-resnet20"
PAGE = "resnet20_fashion-mnist.html"


@pytest.fixture(scope="module")
def published_site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    assert main(["publish", str(out), "--results", str(PUBLISHED)]) == 0
    return out


@pytest.fixture(scope="module")
def table():
    return leaderboard.table(RunStore(PUBLISHED).records())


def test_the_site_is_self_contained_with_a_copy_of_every_record(published_site, table):
    site = published_site
    html = (site / "index.html").read_text() + (site / PAGE).read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html)  # no CDN, works offline
    assert f'href="{PAGE}"' in (site / "index.html").read_text()
    page = (site / PAGE).read_text()
    ids = [i for ids in table["run_ids"] for i in ids]
    for run_id in ids:
        assert f'href="runs/{run_id}.json"' in page
        assert json.loads((site / "runs" / f"{run_id}.json").read_text())["id"] == run_id
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', page):
        if not ref.startswith("data:"):
            assert (site / ref).is_file(), ref
    assert "bd0d5a8" in page and "torch 2.14.1+cu130" in page  # code version and environment per row
    doc = json.loads((site / "data" / "leaderboard.json").read_text())
    assert len(doc["rows"]) == len(table) and doc["schema"] == 1


def test_several_folders_make_one_site_and_text_is_escaped(tmp_path, caplog):
    from test_report import record, sweep

    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    recs = sweep()
    for r in recs[:6]:
        a.write(r)
    for r in recs[4:]:
        b.write(r)
    b.write(record("<img src=x onerror=alert(1)>", 0, 50.0))
    pages = site_builder.publish(tmp_path / "site", [str(tmp_path / "a"), str(tmp_path / "b")])
    assert [p.name for p in pages] == ["index.html", "small-cnn_digits.html"]
    page = pages[1].read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    copies = sorted((tmp_path / "site" / "runs").glob("*.json"))
    assert len(copies) == len(recs) + 1
    for copy in copies:  # the records themselves, byte for byte
        source = tmp_path / ("a" if (tmp_path / "a" / "runs" / copy.name).exists() else "b") / "runs" / copy.name
        assert copy.read_bytes() == source.read_bytes()
    index = pages[0].read_text()
    assert f"<code>{tmp_path / 'a'}</code>: 6 run record(s)" in index
    assert f"<code>{tmp_path / 'b'}</code>: {len(recs) - 6 + 1} run record(s)" in index  # duplicates counted once
    assert "is in" in caplog.text and "the copy in" in caplog.text


def test_publish_refuses_a_folder_without_runs(tmp_path, capsys):
    assert main(["publish", str(tmp_path / "site"), "--results", str(tmp_path)]) == 2
    assert "holds no runs/ folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def browser():
    reason = preview.unavailable()
    if reason:
        pytest.skip(reason)
    with preview.browser() as driver:
        yield driver


def test_the_site_opens_in_headless_chromium_sorts_filters_and_loads_every_image(published_site, table, browser):
    site = published_site
    browser.get((site / "index.html").as_uri())
    assert browser.execute_script("return document.querySelectorAll('#pages tbody tr').length") == 1
    assert preview.broken_images(browser) == [] and preview.console_errors(browser) == []
    browser.find_element("link text", "resnet20").click()
    assert browser.current_url.endswith(PAGE)
    rows = browser.execute_script("return document.querySelectorAll('#board tbody tr').length")
    assert rows == len(table)
    methods = browser.execute_script(
        "return Array.from(document.querySelectorAll('#board tbody tr')).map(r => r.cells[1].textContent)")
    assert sorted(methods) == sorted(table["method"])
    images = browser.execute_script("return Array.from(document.images).map(i => i.getAttribute('src'))")
    assert "plots/resnet20_fashion-mnist.svg" in images and len([i for i in images if i.startswith("bitmaps/")]) == 3
    assert preview.broken_images(browser) == []
    header = browser.find_element("css selector", "#board th[data-key=top1]")
    header.click()  # accuracy: best first
    top1 = [float(v) for v in preview.column(browser, "top1") if v]
    assert top1 == sorted(top1, reverse=True) and top1[0] == pytest.approx(table["top1"].max())
    assert header.get_attribute("aria-sort") == "descending"
    header.click()
    assert [float(v) for v in preview.column(browser, "top1") if v] == sorted(top1)
    browser.find_element("css selector", "#board th[data-key=method]").click()
    names = preview.column(browser, "method")
    bases = [n.split("(")[0] for n in names]  # the browser's collation orders punctuation its own way
    assert bases == sorted(bases) and bases[0] == "fp32" and bases[-1] == "uniform"
    browser.find_element("id", "filter").send_keys("ompq")
    shown = preview.column(browser, "method")
    assert shown and all("ompq" in m for m in shown)
    assert browser.find_element("id", "shown").text == f"{len(shown)} of {len(table)} rows"
    browser.find_element("id", "filter").clear()
    browser.execute_script("const s = document.getElementById('budget'); s.value = 'size_mb=w4';"
                           "s.dispatchEvent(new Event('change'));")
    assert len(preview.column(browser, "method")) == int((table["budget"] == "size_mb=w4").sum())
    link = browser.find_element("css selector", "#board tbody tr:not([hidden]) a.run")
    browser.execute_script("arguments[0].scrollIntoView()", link)
    link.click()  # a row's record opens
    assert json.loads(browser.find_element("tag name", "body").text)["id"] in {i for ids in table["run_ids"]
                                                                              for i in ids}
    browser.back()
    assert preview.console_errors(browser) == []
