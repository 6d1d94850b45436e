"""Runs that survive, measured.

``overhead SCENES... [--iterations N]``: each scene folder run by ``invpbr run``
(a child process) with checkpoints off, at the default (``checkpoint_seconds
= 60``) and every 10 steps; prints the loop time, the checkpoints written and
the seconds spent writing them (result.json ``checkpoints``), and the
overhead: writing time over loop time, measured, and at the default interval
(one write per 60 s of steps).

``load [--scenes 20] [--jobs 2] [--iterations 30]``: a batch of small scenes
(the test suite's tiny scene, each with its own seed) run uninterrupted, then
the same batch killed midway (SIGKILL of the batch and its jobs, when about
half the scenes are done) and resumed with ``--resume``; prints whether all
completed and how far the resumed batch's estimates are from the
uninterrupted one's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _with_optimize(folder: Path, lines: str) -> None:
    toml = folder / "invpbr.toml"
    text = toml.read_text()
    if "[optimize]" in text:
        text = text.replace("[optimize]\n", f"[optimize]\n{lines}\n", 1)
    else:
        text += f"\n[optimize]\n{lines}\n"
    toml.write_text(text)


def overhead(scenes: list[Path], iterations: int | None) -> list[dict]:
    rows = []
    for scene in scenes:
        for name, lines in (("off", "checkpoint_seconds = 0.0"), ("default (60 s)", ""),
                            ("every 10 steps", "checkpoint_every = 10\ncheckpoint_seconds = 0.0")):
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / scene.name
                shutil.copytree(scene, folder)
                _with_optimize(folder, lines)
                cmd = [sys.executable, "-m", "invpbr", "run", str(folder), "--out",
                       str(Path(tmp) / "out"), "--no-progress"]
                if iterations:
                    cmd += ["--iterations", str(iterations)]
                start = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
                wall = time.perf_counter() - start
                if proc.returncode != 0:
                    raise SystemExit(f"{scene}: {proc.stderr}")
                doc = json.loads((Path(tmp) / "out" / "result.json").read_text())
            loop = doc["seconds_per_iteration"] * doc["iterations"]
            ck = doc.get("checkpoints") or {}
            written, seconds = ck.get("written", 0), ck.get("seconds", 0.0)
            row = {"scene": scene.name, "checkpoints": name, "iterations": doc["iterations"],
                   "loop_s": loop, "wall_s": wall, "written": written, "write_s": seconds,
                   "overhead_pct": 100 * seconds / loop if loop else None,
                   "per_write_ms": 1000 * seconds / written if written else None,
                   "at_default_pct": (100 * (seconds / written) / 60.0) if written else None}
            rows.append(row)
            print(f"{scene.name:24s} {name:16s} loop {loop:7.2f} s  wall {wall:7.2f} s  "
                  f"{written:3d} written in {seconds:6.3f} s  "
                  f"overhead {row['overhead_pct']:.3f} %"
                  + (f"  ({row['per_write_ms']:.1f} ms each: {row['at_default_pct']:.4f} % "
                     "at one per 60 s)" if written else ""), flush=True)
    return rows


def write_cost(sizes=(64, 512, 1024, 2048), repeats: int = 3) -> list[dict]:
    """Seconds of one checkpoint write of an RGB texture latent of each size
    with its two Adam moments (float32), as ``invpbr run`` writes it."""
    from invpbr.optimization.checkpoint import write_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            arrays = {name: np.random.default_rng(0).random((n, n, 3), dtype=np.float32)
                      for name in ("value", "m", "v")}
            state = {"version": 1, "latents": {"texture": arrays}}
            times = [write_checkpoint(Path(tmp) / "checkpoint" / "state.npz", state)
                     for _ in range(repeats)]
            mb = 3 * arrays["value"].nbytes / 2**20
            row = {"texels": f"{n}x{n}", "megabytes": mb, "seconds": min(times),
                   "at_default_pct": 100 * min(times) / 60.0}
            rows.append(row)
            print(f"checkpoint of a {n}x{n} RGB texture + Adam moments ({mb:.0f} MB): "
                  f"{min(times) * 1000:.0f} ms (best of {repeats}) = {row['at_default_pct']:.3f} % "
                  "of a run at one write per 60 s", flush=True)
    return rows


def _make_scenes(root: Path, n: int, iterations: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import TOML, make_tiny_scene

    master = make_tiny_scene(root.parent / "master", res=16, photo_spp=16, toml=TOML.replace(
        "iterations = 40", f"iterations = {iterations}\ncheckpoint_every = 2"))
    for i in range(n):
        shutil.copytree(master, root / f"scene_{i:02d}")
        toml = root / f"scene_{i:02d}" / "invpbr.toml"
        toml.write_text(toml.read_text().replace("[optimize]\n", f"[optimize]\nseed = {i}\n"))


def _batch(root: Path, out: Path, jobs: int, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "invpbr", "batch", str(root), "--out", str(out),
                             "--jobs", str(jobs), *extra], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _estimates(out: Path) -> dict[str, np.ndarray]:
    found = {}
    for folder in sorted(p for p in out.iterdir() if (p / "result.json").is_file()):
        doc = json.loads((folder / "result.json").read_text())
        found[folder.name] = (doc["status"], np.asarray(
            [v for vals in doc["parameters"].values() for v in np.ravel(vals)], dtype=np.float64),
            doc["loss"])
    return found


def load(n: int, jobs: int, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "scenes"
        _make_scenes(root, n, iterations)
        start = time.perf_counter()
        _batch(root, Path(tmp) / "plain", jobs).wait()
        plain_s = time.perf_counter() - start
        out = Path(tmp) / "killed"
        start = time.perf_counter()
        proc = _batch(root, out, jobs)
        while proc.poll() is None:
            try:
                done = {r["scene"] for r in json.loads((out / "summary.json").read_text())}
            except (OSError, ValueError):
                done = set()
            running = [f.name for f in root.iterdir() if f.name not in done
                       and (out / f.name / "checkpoint" / "state.npz").is_file()]
            # about half done, and a job in the middle of its steps (it has a checkpoint)
            if len(done) >= n // 2 and running:
                os.killpg(proc.pid, signal.SIGKILL)  # the batch and its running jobs
                break
            time.sleep(0.05)
        proc.wait()
        killed_s = time.perf_counter() - start
        finished = {r["scene"] for r in json.loads((out / "summary.json").read_text())}
        checkpointed = sum((out / f.name / "checkpoint" / "state.npz").is_file()
                           for f in root.iterdir())
        start = time.perf_counter()
        code = _batch(root, out, jobs, "--resume").wait()
        resume_s = time.perf_counter() - start
        rows = json.loads((out / "summary.json").read_text())
        plain, resumed = _estimates(Path(tmp) / "plain"), _estimates(out)
        diffs = {s: float(np.abs(resumed[s][1] - plain[s][1]).max()) for s in plain}
        loss_diffs = [float(np.max(np.abs(np.subtract(resumed[s][2], plain[s][2])) /
                                   np.abs(plain[s][2]))) for s in plain]
        by = {r["scene"]: r for r in rows}
        again = [s for s in plain if s not in finished]  # run (or resumed) after the kill
        report = {
            "scenes": n, "jobs": jobs, "iterations": iterations, "exit_code": code,
            "plain_s": plain_s, "killed_after_s": killed_s, "resume_s": resume_s,
            "done_at_kill": len(finished), "checkpointed_at_kill": checkpointed,
            "completed": sum(r["status"] == "completed" for r in rows),
            "resumed_from_checkpoint": sorted((s, by[s]["resumed_from"]) for s in again
                                              if by[s].get("resumed_from") is not None),
            "skipped_as_done": sum(r["attempts"] == 0 for r in rows),
            "identical": sum(d == 0.0 for d in diffs.values()),
            # two uninterrupted runs (the scenes finished before the kill) vs resumed ones
            "max_abs_diff_uninterrupted": max(diffs[s] for s in finished),
            "max_abs_diff_after_kill": max(diffs[s] for s in again),
            "max_rel_loss_diff": max(loss_diffs),
            "statuses_equal": all(resumed[s][0] == plain[s][0] for s in plain)}
        print(json.dumps(report, indent=2))
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("scenes", nargs="+", type=Path)
    o.add_argument("--iterations", type=int)
    o.add_argument("--json", type=Path)
    ld = sub.add_parser("load")
    ld.add_argument("--scenes", type=int, default=20)
    ld.add_argument("--jobs", type=int, default=2)
    ld.add_argument("--iterations", type=int, default=30)
    ld.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.what == "overhead":
        result = {"runs": overhead(args.scenes, args.iterations), "writes": write_cost()}
    else:
        result = load(args.scenes, args.jobs, args.iterations)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
