"""Open a published site in headless Chromium (Debian's ``chromium`` driven by selenium through Debian's
``chromium-driver``; nothing is downloaded): what the site test checks, and screenshots for the README.

    python -m mpqbench.report.preview SITE_DIR OUT_DIR [PAGE]   # OUT_DIR/index.png and OUT_DIR/<page>.png

Selenium is a test dependency (``pip install -e '.[test]'``), imported only here.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def unavailable() -> str | None:
    """None when a headless browser can be started, else what is missing and how to install it."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium, or the package's [test] extra)"
    if not any(shutil.which(b) for b in CHROMIUM):
        return "chromium is not installed (apt-get install chromium)"
    if not shutil.which(DRIVER):
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


@contextmanager
def browser(width: int = 1400, height: int = 1000):
    """A headless Chromium session whose console messages can be read with :func:`console_errors`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(b) for b in CHROMIUM if shutil.which(b))
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--allow-file-access-from-files", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which(DRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """Console messages of level SEVERE since the last call (failed loads, script errors)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def broken_images(driver) -> list[str]:
    """The ``src`` of every image on the page that did not load (or has no size)."""
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);")


def column(driver, key: str) -> list[str]:
    """The sort keys of one column of the visible rows of the page's table, top to bottom."""
    return driver.execute_script(
        "const i = Array.from(document.querySelectorAll('#board thead th'))"
        ".findIndex(t => t.dataset.key === arguments[0]);"
        "return Array.from(document.querySelectorAll('#board tbody tr')).filter(r => !r.hidden)"
        ".map(r => r.cells[i].dataset.sort);", key)


def screenshots(site: Path, out: Path, page: str | None = None) -> list[Path]:
    """Full-page PNG screenshots of the index and one model page (the first, unless ``page`` names one)."""
    site, out = Path(site).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    page = page or sorted(p.name for p in site.glob("*.html") if p.name != "index.html")[0]
    written = []
    with browser() as driver:
        for name in ("index.html", page):
            driver.get((site / name).as_uri())
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1400, min(max(height + 40, 600), 6000))
            path = out / (Path(name).stem + ".png")
            driver.save_screenshot(str(path))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    reason = unavailable()
    if reason:
        print(f"preview: {reason}", file=sys.stderr)
        return 2
    for path in screenshots(Path(args[0]), Path(args[1]), args[2] if len(args) == 3 else None):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
