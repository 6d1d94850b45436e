"""Headless Chromium for pictures of pages (``invpbr report --screenshot``).

Chromium runs with its network features off (no sync, no component updates,
no background networking, no QUIC) and a fresh profile in a temporary folder,
so a screenshot needs nothing beyond the page's own files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

#: Executable names tried, in order (Debian's package is ``chromium``).
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Flags for a headless Chromium that reaches no network on its own.
HEADLESS_FLAGS = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars"]


def find_browser() -> str | None:
    """The path of a Chromium executable, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_flags(profile: str | os.PathLike) -> list[str]:
    """Headless flags with a fresh profile folder (and ``--no-sandbox`` as
    root, where Chromium's sandbox refuses to start)."""
    flags = HEADLESS_FLAGS + [f"--user-data-dir={profile}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    return flags


def screenshot(page: str | os.PathLike, png: str | os.PathLike, *, width: int = 1200,
               height: int = 1600, timeout: float = 120.0) -> Path:
    """Save a screenshot of ``page`` (a file or an http URL) as ``png``.

    Raises:
        FileNotFoundError: no Chromium is installed (Debian: ``apt-get install chromium``),
            or ``page`` is a file that does not exist.
        RuntimeError: Chromium wrote no picture (its last output lines are in the message).
    """
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (tried " + ", ".join(BROWSERS) + "); "
                                "install one, e.g. `apt-get install chromium`")
    page = str(page)
    if "://" not in page:
        path = Path(page).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such page")
        page = path.as_uri()
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    with tempfile.TemporaryDirectory(prefix="invpbr-chromium-") as profile:
        cmd = [browser, *browser_flags(profile), f"--window-size={width},{height}",
               f"--screenshot={png}", page]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.is_file():
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-5:])
        raise RuntimeError(f"{browser} wrote no screenshot of {page} (exit {proc.returncode}):\n{tail}")
    return png
