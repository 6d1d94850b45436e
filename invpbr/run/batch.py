"""Many scene folders: each runs in its own process, so that one broken or
crashing scene never stops the others; a summary table collects them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def find_scene_folders(root: str | Path) -> list[Path]:
    """Sub-folders of ``root`` that hold an invpbr.toml or a scene.xml, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and ((p / "invpbr.toml").is_file() or (p / "scene.xml").is_file()))


def run_scene_process(folder: Path, out_dir: Path, *, iterations: int | None = None,
                      spp: int | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run ``invpbr run`` on one folder in a child process; one summary row."""
    cmd = [sys.executable, "-m", "invpbr", "run", str(folder), "--out", str(out_dir), "--no-progress"]
    if iterations is not None:
        cmd += ["--iterations", str(iterations)]
    if spp is not None:
        cmd += ["--spp", str(spp)]
    start = time.perf_counter()
    row: dict[str, Any] = {"scene": folder.name, "status": "failed", "errors": {}, "seconds": 0.0,
                           "seconds_per_iteration": None, "message": ""}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        row["message"] = f"timed out after {timeout} s"
        row["seconds"] = time.perf_counter() - start
        return row
    row["seconds"] = time.perf_counter() - start
    result_file = out_dir / "result.json"
    if proc.returncode == 0 and result_file.is_file():
        data = json.loads(result_file.read_text())
        row.update(status=data.get("status", "completed"), errors=data.get("errors", {}),
                   seconds_per_iteration=data.get("seconds_per_iteration"))
    else:
        lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
        # invpbr's own error (which may go on over several lines) starts with
        # "invpbr run: error:"; after a crash, the last line says what happened.
        ours = [ln for ln in lines if ln.startswith("invpbr run: error:")]
        row["message"] = ours[-1] if ours else lines[-1] if lines else f"exit code {proc.returncode}"
    return row


def run_batch(root: str | Path, out: str | Path, *, iterations: int | None = None,
              spp: int | None = None, jobs: int = 1, timeout: float | None = None,
              on_row=None) -> list[dict[str, Any]]:
    """Run every scene folder in ``root``; write ``out/summary.csv`` and ``.json``
    and ``out/index.html`` (one row per scene, linking to each report).

    Args:
        root: folder of scene folders.
        out: results go to ``out/<scene>/``; the summary to ``out/summary.*``.
        iterations, spp: override each scene's settings.
        jobs: scenes run at once (each is one process).
        timeout: seconds after which a scene is stopped and reported.
        on_row: called with each summary row as it finishes.

    Returns:
        One row per scene: scene, status, errors, seconds, seconds_per_iteration, message.
    """
    out = Path(out)
    folders = find_scene_folders(root)
    out.mkdir(parents=True, exist_ok=True)

    def one(folder: Path) -> dict[str, Any]:
        row = run_scene_process(folder, out / folder.name, iterations=iterations, spp=spp,
                                timeout=timeout)
        if on_row is not None:
            on_row(row)
        return row

    with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
        rows = list(pool.map(one, folders))
    write_summary(rows, out)
    from ..results.report import write_index

    write_index(out, rows)
    return rows


def write_summary(rows: list[dict[str, Any]], out: Path) -> None:
    """``summary.json`` (rows as they are) and ``summary.csv`` (one column per error key)."""
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    error_keys = sorted({k for r in rows for k in r["errors"]})
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["scene", "status", "seconds", "seconds_per_iteration", "message"]
                        + [f"error:{k}" for k in error_keys])
        for r in rows:
            writer.writerow([r["scene"], r["status"], f"{r['seconds']:.2f}",
                             "" if r["seconds_per_iteration"] is None else f"{r['seconds_per_iteration']:.4f}",
                             r["message"]] + [r["errors"].get(k, "") for k in error_keys])
