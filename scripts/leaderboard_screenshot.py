"""PNG of a report's "at a glance" matrix, as headless Chromium renders leaderboard.html (the README's picture).

    dkbench report suite=knowledge_probe paths.runs_dir=RUNS paths.reports_dir=/tmp/reports
    python scripts/leaderboard_screenshot.py /tmp/reports/knowledge_probe/leaderboard.html docs/img/leaderboard_matrix.png

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`) and
selenium (the dev extra). The matrix of the rank metric is cut out of the page (the element, not
the window) and stored as a 256-colour PNG, which keeps the flat table colours and the file small.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--force-device-scale-factor=1", "--hide-scrollbars"]


def screenshot(page: Path, out: Path, *, width: int = 1600, selector: str = "section.matrix-block table.matrix",
               max_bytes: int = 150_000) -> int:
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    for tool in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="dkbench-shot-")
    for flag in [*FLAGS, f"--window-size={width},4000", f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page.resolve().as_uri())
        png = driver.find_element(By.CSS_SELECTOR, selector).screenshot_as_png  # the first: the rank metric
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    size = out.stat().st_size
    if size > max_bytes:
        sys.exit(f"{out} is {size} bytes > {max_bytes}: pick a smaller report or a narrower --width")
    return size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path, help="a report's leaderboard.html")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1600, help="browser window width in px")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        sys.exit(f"{args.page} does not exist: build it with `dkbench report suite=<name>` first")
    size = screenshot(args.page, args.out, width=args.width)
    print(f"{args.out}: {size / 1000:.0f} kB")


if __name__ == "__main__":
    main()
