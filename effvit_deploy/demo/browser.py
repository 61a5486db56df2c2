"""Drive the running demo page in a real headless browser, as a user would: pick an example,
press Classify, read each column's labels, and save a screenshot.

Uses Playwright's Python API with a browser already on the machine (Debian's chromium at
/usr/bin/chromium; `playwright install` is never needed). Used by the browser test and by
`docs/make_screenshot.py`, which makes the README's docs/demo.png.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Union

from ..atomic import atomic_path

CHROMIUM = "/usr/bin/chromium"


def find_chromium() -> Optional[str]:
    """Path of a chromium executable on this machine, or None."""
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def classify_example(
    url: str,
    example: int,
    screenshot: Union[str, Path, None] = None,
    executable_path: Optional[str] = None,
    timeout_s: float = 90.0,
    viewport: tuple[int, int] = (1400, 1000),
    gallery: str = "examples",
) -> list[dict[str, float]]:
    """Open `url`, click example number `example` of the examples block with element id
    `gallery` ("examples": out of distribution; "examples-val": the runs' validation images),
    press Classify, wait for every column's labels.

    Returns one {label: confidence} dict per variant column, read from the page's `gr.Label`
    meters; writes a full-page PNG to `screenshot` when given.
    """
    from playwright.sync_api import sync_playwright

    executable_path = executable_path or find_chromium()
    if executable_path is None:
        raise FileNotFoundError("no chromium found: install it (Debian: apt-get install chromium)")
    timeout_ms = timeout_s * 1000
    args = ["--no-sandbox"] if hasattr(os, "getuid") and os.getuid() == 0 else []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable_path, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            page.locator(f"#{gallery} button.gallery-item").nth(example).click()
            page.wait_for_selector("#input-image img")
            page.click("#classify")
            page.wait_for_function(
                "() => (document.querySelector('#status')?.innerText || '').includes('answered')",
                timeout=timeout_ms,
            )
            columns = page.locator("[id^='label-']").count()
            labels = []
            for i in range(columns):
                meters = page.locator(f"#label-{i} meter")
                labels.append({
                    meters.nth(k).get_attribute("aria-label"): float(meters.nth(k).get_attribute("value"))
                    for k in range(meters.count())
                })
            if screenshot is not None:
                with atomic_path(screenshot) as tmp:
                    page.screenshot(path=str(tmp), type="png", full_page=True)
            return labels
        finally:
            browser.close()
