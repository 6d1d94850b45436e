"""report.html and the live view in a real browser: headless Chromium driven by
selenium (Debian's ``chromium`` and ``chromium-driver``; .ci/run installs them
where they are missing and it runs as root).

Each page must render (a screenshot that is not blank), every image must
load, the browser's console must show no error, and the live page's loss
curve must advance between two screenshots while a run goes.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import invpbr
from invpbr.run.browser import browser_flags, find_browser

from conftest import make_tiny_scene

REPO = Path(__file__).resolve().parents[1]
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"

pytestmark = pytest.mark.skipif(
    find_browser() is None or not os.path.exists(CHROMEDRIVER),
    reason="no Chromium and chromedriver here (Debian: apt-get install chromium chromium-driver; "
           ".ci/run installs them when it runs as root)")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find_browser()
    for flag in browser_flags(tmp_path_factory.mktemp("chromium-profile")):
        options.add_argument(flag)
    options.add_argument("--window-size=1200,1400")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def load(driver, url: str) -> None:
    """Open ``url`` with an empty console log (the log is read, and so emptied, first)."""
    driver.get_log("browser")
    driver.get(url)


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def broken_images(driver) -> list[str]:
    """src of every image on the page that did not load (or has no pixels)."""
    return driver.execute_script(
        "return Array.from(document.images)"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);")


def screenshot(driver) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))


def not_blank(shot: np.ndarray) -> bool:
    """More than a page of one colour: many distinct colours and real spread."""
    colours = np.unique(shot.reshape(-1, 3)[::7], axis=0)
    return len(colours) > 200 and float(shot.std()) > 20


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    scene = make_tiny_scene(tmp_path_factory.mktemp("browser") / "tiny")
    problem = invpbr.load_problem(scene)
    result = invpbr.optimize(problem, iterations=8, progress=False)
    return invpbr.save_result(result, tmp_path_factory.mktemp("out") / "tiny") / "report.html"


def test_report_page_renders_with_every_image_and_no_console_error(driver, report):
    load(driver, report.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    n = driver.execute_script("return document.images.length")
    assert n >= 10, n  # views at start and end, loss, trajectory
    assert broken_images(driver) == []
    assert console_errors(driver) == []
    assert not_blank(screenshot(driver))
    assert "tiny" in driver.title


def test_a_broken_image_is_seen(driver, report, tmp_path):
    """The check above can fail: a report whose picture is gone shows it."""
    copy = tmp_path / "copy"
    shutil.copytree(report.parent, copy)
    (copy / "report" / "loss.png").unlink()
    load(driver, (copy / "report.html").as_uri())
    assert any(src.endswith("report/loss.png") for src in broken_images(driver))
    assert any("loss.png" in e for e in console_errors(driver))


def curve_points(driver) -> int:
    points = driver.execute_script(
        "return document.getElementById('curve').getAttribute('points') || ''")
    return len(points.split())


def test_live_page_follows_a_run(driver, tmp_path):
    scene = make_tiny_scene(tmp_path / "tiny")
    cmd = [sys.executable, "-m", "invpbr", "run", str(scene), "--out", str(tmp_path / "out"),
           "--iterations", "3000", "--no-progress", "--watch", "--port", "0"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, stdin=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline()
        found = re.search(r"live view: (http://\S+)", line)
        assert found, f"no live view address in: {line!r}"
        load(driver, found.group(1))
        deadline = time.monotonic() + 120
        while curve_points(driver) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        # the renders replace the photo placeholders once the first refresh is served
        while (not driver.execute_script(
                "return Array.from(document.images).every(i => i.src.includes('render/') "
                "|| i.alt === 'photo')") and time.monotonic() < deadline):
            time.sleep(0.5)
        first_points, first = curve_points(driver), screenshot(driver)
        time.sleep(4)
        second_points, second = curve_points(driver), screenshot(driver)
        assert proc.poll() is None, "the run ended before the page was checked"
        assert second_points > first_points >= 3
        assert np.any(first != second)
        assert not_blank(second)
        assert broken_images(driver) == []
        assert console_errors(driver) == []
        steps = driver.find_element("id", "steps").text
        assert re.match(r"\d+ steps", steps)
        assert "steps/s" in driver.find_element("id", "rate").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
