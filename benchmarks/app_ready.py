"""``hf-transfer app``: from a finished run folder to a working page, and the page's predictions against pipeline().

    python benchmarks/app_ready.py outputs/demo/seed0/dann IMAGE [--screenshot docs/images/app_dann_vs_source_only.png]

Starts ``hf-transfer app RUN`` (a domain-adaptation run: its source-only run beside it is loaded too) and times it
to the page answering HTTP and to both models' predictions shown in headless Chromium after uploading IMAGE; reads
them off the page and compares them with ``pipeline()`` on the same file to 4 decimals. Prints the wall times, the
app process's own CPU time when its page answered (the part that does not depend on what else the machine runs)
and the load average. Needs Debian's ``chromium`` and ``chromium-driver`` and selenium.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1060",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def _scores(driver, slot: str) -> list[tuple[str, ...]]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#scores-{slot} tr")[1:]
    return [tuple(c.text for c in row.find_elements(By.TAG_NAME, "td")) for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("image")
    parser.add_argument("--port", type=int, default=7873)
    parser.add_argument("--screenshot", default=None)
    args = parser.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    command = [str(Path(sys.executable).with_name("hf-transfer")), "app", args.run, "--port", str(args.port)]
    start = time.perf_counter()
    app = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{args.port}/"
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if app.poll() is not None:
                raise SystemExit(f"hf-transfer app exited {app.returncode}:\n{app.communicate()[0]}") from None
            time.sleep(0.05)
    ready, cpu = time.perf_counter() - start, _cpu_seconds(app.pid)
    driver = _browser()
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        driver.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(Path(args.image).resolve()))
        wait.until(lambda d: _scores(d, "a") and _scores(d, "b"))
        shown = time.perf_counter() - start
        page = {slot: _scores(driver, slot) for slot in "ab"}
        if args.screenshot:
            time.sleep(1)  # the Label's bars animate
            driver.save_screenshot(args.screenshot)
    finally:
        driver.quit()
        app.terminate()
        app.communicate(timeout=30)
    from transformers import pipeline

    baseline = str(Path(args.run).resolve().parent / "source_only")
    for slot, folder in zip("ab", (args.run, baseline), strict=True):
        want = [(p["label"], f"{p['score']:.4f}") for p in pipeline("image-classification", model=folder)(args.image)]
        print(f"{folder}: page {page[slot]}; equal to pipeline() to 4 decimals: {page[slot] == want}")
    print(
        f"page answers {ready:.1f} s after the command started (the app's CPU time by then {cpu:.1f} s); "
        f"both models' predictions on the page {shown:.1f} s; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
