"""Camera, pose and light-pose refinement on random scenes nobody tuned them for.

Each scene is drawn by :func:`invpbr.testing.random_scenes.make_random_scene` (seed
``S + i``) and run through ``invpbr run`` as a user would (a separate process, the
scene's ``invpbr.toml``), then scored against its truth:

- ``camera``: a camera succeeds when it ends within 0.3 degrees and 1 % of the scene
  diagonal of the truth; it is "worse" when its rotation or position error ends above
  its start. Success rate over all cameras of all scenes.
- ``pose``: a run succeeds when the pose ends within 0.5 degrees and 0.5 % of the
  diagonal. Success rate over runs. The cameras frame the posed object, as a user
  photographs an object whose pose they estimate (``--framing scene``: the whole scene,
  where the object covers a few dozen pixels and its photos hardly fix its turn).
- ``light``: the pose of a rectangle area light (``lamp.to_world``), seen through the
  shading and shadows it casts and, from some cameras, its own outline; scored as a pose.
- ``shape``: the free vertices of an object (``kind = "shape"``) that starts with
  random bumps and dents; a run succeeds when its Chamfer distance to the true surface
  (result.json ``geometry_errors``, normalized by the truth's bounding-box diagonal)
  ends at most half its start; "worse" when it ends above its start.

Usage::

    python benchmarks/robustness.py --kind camera|pose|light|shape --n 20 --seed 0 [--size 48]
        [--iterations 100] [--spp 8] [--max-cameras 12] [--photo-spp 128] [--photo-format png]
        [--framing scene|object] [--min-cameras 3] [--start-rotation LOW HIGH]
        [--repeat | --rerun] [--json out.json]
        [--keep DIR] [--set estimate.adam='"motion"' --set optimize.lr_decay=0.01 ...]

``--repeat`` runs every scene twice (different run seeds: how much the result depends on
the Monte Carlo noise) and reports the ratio of the two final errors (goal: within 2x);
``--rerun`` runs every scene twice as it is (the same inputs, the same seed: equal where
runs are deterministic, the default for poses and cameras). ``--set TABLE.KEY=VALUE`` (VALUE in TOML) adds a
setting to every scene's ``invpbr.toml`` (``estimate``: the ``[[estimate]]`` table),
to compare options on the same scenes. Prints one line per scene, then the summary;
with iterate averaging (``--set estimate.average=0.5``) also the same runs scored at
their last step (result.json's ``averaged``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import invpbr  # noqa: E402,F401  (sets up LLVM before Mitsuba)
from invpbr.testing.random_scenes import make_random_scene  # noqa: E402

#: Success thresholds (degrees, fraction of the diagonal).
GOALS = {"camera": (0.3, 0.01), "pose": (0.5, 0.005), "light": (0.5, 0.005)}
#: ``shape``: success when the Chamfer distance ends at most this fraction of its start.
SHAPE_GOAL = 0.5
#: What the cameras frame by default: a user who estimates an object's pose or shape
#: photographs that object; cameras and lamps are seen through the whole scene. (Before
#: 2026-12-07 poses framed the scene by default, where a 0.5 degree turn moves the object's
#: outline by hundredths of a pixel at 48x48: ``--framing scene`` runs those draws.)
FRAMING = {"camera": "scene", "light": "scene", "pose": "object", "shape": "object"}


def framing_of(kind: str, args: dict) -> str:
    """The framing a run used (runs saved before ``FRAMING`` stored None for the
    generator's default then: object for shapes, scene otherwise)."""
    return args.get("framing") or ("object" if kind == "shape" else "scene")


def run_scene(folder: Path, out: Path, run_seed: int | None = None,
              timeout: float = 3600) -> tuple[dict, int, float]:
    """``invpbr run`` on ``folder``; (result.json, exit code, seconds)."""
    if run_seed is not None:
        toml = folder / "invpbr.toml"
        text = re.sub(r"(?m)^seed = .*\n", "", toml.read_text())  # the previous run's
        toml.write_text(text.replace("[optimize]\n", f"[optimize]\nseed = {run_seed}\n"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "invpbr", "run", str(folder), "--out", str(out),
                           "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=timeout)
    seconds = time.perf_counter() - start
    path = out / "result.json"
    if not path.is_file():
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return {}, proc.returncode, seconds
    return json.loads(path.read_text()), proc.returncode, seconds


def add_settings(toml: Path, settings: list[str]) -> None:
    """Add ``TABLE.KEY=VALUE`` settings (VALUE in TOML) to an ``invpbr.toml``."""
    text = toml.read_text()
    for setting in settings:
        name, _, value = setting.partition("=")
        table, _, key = name.partition(".")
        if not key or not value:
            raise ValueError(f"--set {setting!r}: expected TABLE.KEY=VALUE, e.g. "
                             "estimate.adam='\"group\"'")
        header = "[[estimate]]\n" if table == "estimate" else f"[{table}]\n"
        if header not in text:
            text += f"\n{header}"
        text = text.replace(header, f"{header}{key} = {value}\n", 1)
    toml.write_text(text)


def camera_rows(result: dict, diagonal: float) -> list[dict]:
    rows = []
    start = result.get("camera_errors_initial", {})
    last = next((a.get("last_step_camera_errors", {})
                 for a in (result.get("averaged") or {}).values()), {})
    for sid, e in result.get("camera_errors", {}).items():
        s = start[sid]
        rows.append({"camera": sid, "rotation_deg": e["rotation_deg"],
                     "position": e["position"] / diagonal,
                     "start_rotation_deg": s["rotation_deg"], "start_position": s["position"] / diagonal,
                     "worse": bool(e["rotation_deg"] > s["rotation_deg"]
                                   or e["position"] > s["position"])})
        if sid in last:
            rows[-1] |= last_step(last[sid], s, diagonal)
        rows[-1] |= sigma_of(result, "cameras", sid, diagonal)
    return rows


def sigma_of(result: dict, key: str, motion: str, diagonal: float) -> dict:
    """The polish's standard deviations of a motion (result.json ``polished``): rotation
    (deg) and position (diag); empty without a polish, None where not determined."""
    polished = (result.get("polished") or {}).get(key)
    if not polished:
        return {}
    entry = polished["motions"].get(motion, {})
    sigma = entry.get("sigma") or {}
    position = sigma.get("position")
    # (two polishes of a pose ended beyond each other's noise: invpbr.optimization.polish.apart)
    two = any(((entry.get(e) or {}).get("apart") or {}).get("two_minima")
              for e in ("from_start", "second_chance"))
    return {"sigma_rotation_deg": sigma.get("rotation_deg"),
            "sigma_position": None if position is None else position / diagonal,
            "two_minima": bool(two)}


def last_step(e: dict, s: dict, diagonal: float) -> dict:
    """The errors of the last step's state where the run returned an average
    (result.json's ``averaged``): the same inputs scored without averaging."""
    return {"last_rotation_deg": e["rotation_deg"], "last_position": e["position"] / diagonal,
            "last_worse": bool(e["rotation_deg"] > s["rotation_deg"]
                               or e["position"] > s["position"])}


def pose_row(result: dict, diagonal: float) -> dict | None:
    for key, e in result.get("geometry_errors", {}).items():
        s = result["geometry_errors_initial"][key]
        row = {"key": key, "rotation_deg": e["rotation_deg"], "position": e["position"] / diagonal,
               "start_rotation_deg": s["rotation_deg"], "start_position": s["position"] / diagonal,
               "worse": bool(e["rotation_deg"] > s["rotation_deg"]
                             or e["position"] > s["position"])}
        last = (result.get("averaged") or {}).get(key, {}).get("last_step_errors")
        if last:
            row |= last_step(last, s, diagonal)
        return row | sigma_of(result, key, "pose", diagonal)
    return None


def shape_row(result: dict) -> dict | None:
    """A shape's Chamfer distance at the end and at the start, and their ratio."""
    for key, e in result.get("geometry_errors", {}).items():
        if "chamfer" in e:
            start = result["geometry_errors_initial"][key]["chamfer"]
            return {"key": key, "chamfer": e["chamfer"], "start_chamfer": start,
                    "ratio": e["chamfer"] / start, "worse": bool(e["chamfer"] > start)}
    return None


def distribution(values) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "-"
    return f"median {np.median(v):.3g}, p90 {np.percentile(v, 90):.3g}, worst {v.max():.3g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("camera", "pose", "light", "shape"), required=True)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--spp", type=int, default=8)
    parser.add_argument("--max-depth", type=int, default=2)
    parser.add_argument("--photo-spp", type=int, default=128,
                        help="samples per pixel of the simulated photos (before their sensor "
                             "noise and 8-bit rounding)")
    parser.add_argument("--photo-format", choices=("png", "exr"), default="png",
                        help="png: 8-bit sRGB, clipped (as a camera); exr: linear, neither "
                             "clipped nor quantized")
    parser.add_argument("--framing", choices=("scene", "object"), default=None,
                        help="what the cameras frame: the whole scene or the estimated object "
                             "(default: object for poses and shapes, scene for cameras and "
                             "lights; FRAMING)")
    parser.add_argument("--max-cameras", type=int, default=12,
                        help="at most this many cameras per scene (poses, lights, shapes: "
                             "at most 6)")
    parser.add_argument("--min-cameras", type=int, default=3,
                        help="at least this many cameras per scene (default 3; the draw is "
                             "from this to --max-cameras)")
    parser.add_argument("--start-rotation", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="starting rotation errors (degrees) drawn from this range instead "
                             "of the kind's default (cameras 0.5-3, poses and lights 1-6)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--repeat", action="store_true",
                       help="run every scene twice, with run seeds 0 and 1")
    again.add_argument("--rerun", action="store_true",
                       help="run every scene twice with the same inputs (its own seed)")
    parser.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="add a setting (VALUE in TOML) to every scene's invpbr.toml")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--keep", help="keep scenes and results in this folder")
    parser.add_argument("--summarize", metavar="JSON",
                        help="only print the summary of the scenes a (partial) --json file holds")
    args = parser.parse_args(argv)
    if args.summarize:
        saved = json.loads(Path(args.summarize).read_text())
        summarize(args.kind, saved["args"], saved["scenes"], saved["ratios"], saved["seconds"])
        return 0

    args.framing = args.framing or FRAMING[args.kind]
    most = args.max_cameras if args.kind == "camera" else min(6, args.max_cameras)
    if not 1 <= args.min_cameras <= most:
        parser.error(f"--min-cameras {args.min_cameras}: expected 1 to {most} "
                     f"(--max-cameras, at most 6 for --kind {args.kind})")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="robustness_"))
    rot_goal, pos_goal = GOALS.get(args.kind, (None, None))
    scenes, units, ratios = [], [], []
    total = time.perf_counter()
    for i in range(args.n):
        seed = args.seed + i
        folder = work / f"{args.kind}_{seed}"
        info = make_random_scene(folder, args.kind, seed, size=args.size, spp=args.spp,
                                 iterations=args.iterations, max_depth=args.max_depth,
                                 photo_spp=args.photo_spp, photo_format=args.photo_format,
                                 framing=args.framing,
                                 n_cameras=(args.min_cameras, most),
                                 start_errors={"rotation_deg": tuple(args.start_rotation)}
                                 if args.start_rotation else None)
        add_settings(folder / "invpbr.toml", args.set)
        diagonal = info["diagonal"]
        finals = []
        for r in range(2 if args.repeat or args.rerun else 1):
            result, code, seconds = run_scene(folder, work / f"out_{args.kind}_{seed}_{r}",
                                              run_seed=r if args.repeat else None)
            if args.kind == "camera":
                rows = camera_rows(result, diagonal)
            else:
                row = shape_row(result) if args.kind == "shape" else pose_row(result, diagonal)
                rows = [row] if row else []
            for row in rows:
                if args.kind == "shape":
                    row["ok"] = bool(row["ratio"] <= SHAPE_GOAL)
                    continue
                row["ok"] = bool(row["rotation_deg"] <= rot_goal and row["position"] <= pos_goal)
                if "last_rotation_deg" in row:
                    row["last_ok"] = bool(row["last_rotation_deg"] <= rot_goal
                                          and row["last_position"] <= pos_goal)
            warnings = [w for w in result.get("warnings", []) if "diverg" in w.lower()
                        or "best" in w.lower()]
            scene = {"seed": seed, "run": r, "status": result.get("status", "failed"),
                     "exit_code": code, "seconds": seconds, "rows": rows, "info": info,
                     "warnings": warnings}
            scenes.append(scene)
            if r == 0:
                units += rows
            if rows and args.kind == "shape":
                finals.append(rows[0]["chamfer"])
            elif rows:
                finals.append(max(max(x["rotation_deg"] / rot_goal, x["position"] / pos_goal)
                                  for x in rows))
            ok = sum(x["ok"] for x in rows)
            worse = sum(x["worse"] for x in rows)
            if args.kind == "shape":
                errors = (f"Chamfer {rows[0]['start_chamfer']:.4f} -> {rows[0]['chamfer']:.4f}"
                          if rows else "no Chamfer distance")
            else:
                errors = (f"rotation max {max((x['rotation_deg'] for x in rows), default=float('nan')):.3f} deg, "
                          f"position max {max((x['position'] for x in rows), default=float('nan')):.4f} diag")
            print(f"{args.kind} seed {seed} run {r}: {scene['status']} (exit {code}), "
                  f"{ok}/{len(rows)} ok, {worse} worse than start, {errors}, "
                  f"{seconds:.0f} s; {info['floor']}, "
                  f"{'+'.join(o['shape'] for o in info['objects'])}, {info['lighting']}, "
                  f"{info['cameras']} cameras", flush=True)
        if len(finals) == 2:
            ratios.append(max(finals) / max(min(finals), 1e-9))
        if args.json:  # after every scene: a partial run can still be summarized
            Path(args.json).write_text(json.dumps(
                {"args": vars(args), "scenes": scenes, "ratios": ratios,
                 "seconds": time.perf_counter() - total}, indent=1))
    summarize(args.kind, vars(args), scenes, ratios, time.perf_counter() - total)
    return 0


def seed_ranges(seeds) -> str:
    """``[100, 101, 102, 800]`` -> ``"100..102, 800"`` (merged JSONs hold gaps)."""
    runs: list[list[int]] = []
    for seed in sorted(set(seeds)):
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in runs)


def summarize(kind: str, args: dict, scenes: list[dict], ratios: list[float],
              seconds: float) -> None:
    """Print the success rate, error distributions, statuses and time of ``scenes``."""
    units = [row for s in scenes if s["run"] == 0 for row in s["rows"]]
    n_scenes = len({s["seed"] for s in scenes})
    n_units = len(units)
    ok = sum(u["ok"] for u in units)
    what = "cameras" if kind == "camera" else "runs"
    print(f"\n{kind}: {n_scenes} scenes (seeds {seed_ranges(s['seed'] for s in scenes)}), "
          f"{args['size']}x{args['size']}, spp {args['spp']}, max_depth {args['max_depth']}, "
          f"{args['iterations']} iterations, cameras frame the "
          f"{framing_of(kind, args)}, photos at {args.get('photo_spp', 128)} spp"
          f"{'' if args.get('photo_format', 'png') == 'png' else ' (' + args['photo_format'] + ')'}"
          + "".join(f", {x}" for x in args.get("set") or []))
    if kind == "shape":
        print(f"success: {ok}/{n_units} runs ({100.0 * ok / max(n_units, 1):.1f} %) end at most "
              f"{SHAPE_GOAL:g}x their start's Chamfer distance")
        print(f"worse than start: {sum(u['worse'] for u in units)}/{n_units}")
        print(f"Chamfer distance (diag of the truth): "
              f"{distribution([u['chamfer'] for u in units])}; start: "
              f"{distribution([u['start_chamfer'] for u in units])}")
        print(f"end / start: {distribution([u['ratio'] for u in units])}")
        statuses_and_time(scenes, ratios, args, seconds)
        return
    rot_goal, pos_goal = GOALS[kind]
    print(f"success: {ok}/{n_units} {what} ({100.0 * ok / max(n_units, 1):.1f} %) within "
          f"{rot_goal} deg and {100 * pos_goal:g} % of the diagonal")
    improved = sum(u["rotation_deg"] < u["start_rotation_deg"]
                   and u["position"] < u["start_position"] for u in units)
    print(f"better than start in both rotation and position: {improved}/{n_units}")
    print(f"worse than start: {sum(u['worse'] for u in units)}/{n_units}")
    print(f"rotation error (deg): {distribution([u['rotation_deg'] for u in units])}")
    print(f"position error (diag): {distribution([u['position'] for u in units])}")
    print(f"start rotation (deg): {distribution([u['start_rotation_deg'] for u in units])}; "
          f"start position (diag): {distribution([u['start_position'] for u in units])}")
    last = [u for u in units if "last_rotation_deg" in u]
    if last:  # iterate averaging: the same runs scored at their last step
        print(f"last step instead of the average ({len(last)}/{n_units}): success "
              f"{sum(u['last_ok'] for u in last)}, worse than start "
              f"{sum(u['last_worse'] for u in last)}; rotation (deg): "
              f"{distribution([u['last_rotation_deg'] for u in last])}; position (diag): "
              f"{distribution([u['last_position'] for u in last])}")
    sigma = [u for u in units if u.get("sigma_rotation_deg") is not None]
    if sigma:  # the polish's uncertainty against the errors it describes
        within = sum(u["rotation_deg"] <= 2 * u["sigma_rotation_deg"]
                     and u["position"] <= 2 * u["sigma_position"] for u in sigma)
        print(f"polish standard deviations ({len(sigma)}/{n_units}): rotation (deg) "
              f"{distribution([u['sigma_rotation_deg'] for u in sigma])}; position (diag) "
              f"{distribution([u['sigma_position'] for u in sigma])}; errors within 2 sigma "
              f"in both: {within}/{len(sigma)}; error / sigma, rotation: "
              f"{distribution([u['rotation_deg'] / u['sigma_rotation_deg'] for u in sigma])}")
        undetermined = sum(u.get("sigma_rotation_deg") is None and "sigma_rotation_deg" in u
                           for u in units)
        if undetermined:
            print(f"not determined by the photos (polish): {undetermined}/{n_units}")
        tight = [u for u in sigma if 2 * u["sigma_rotation_deg"] <= rot_goal
                 and 2 * u["sigma_position"] <= pos_goal]
        print(f"determined to the goal by their photos (2 polish sigmas within it): "
              f"{len(tight)}/{n_units} {what}, {sum(u['ok'] for u in tight)} of them within "
              f"the goal; the others: {sum(u['ok'] for u in units) - sum(u['ok'] for u in tight)}"
              f"/{n_units - len(tight)}")
    flagged = [u for u in units if u.get("two_minima")]
    if any("two_minima" in u for u in units):
        print(f"two minima (two polishes of a pose ended beyond each other's noise, their "
              f"losses within what the photos' noise could swap; the run warns): "
              f"{len(flagged)}/{n_units} {what}, "
              f"{sum(u['ok'] for u in flagged)} of them within the goal; not flagged but "
              f"outside the goal: {sum(not u['ok'] and not u.get('two_minima') for u in units)}")
    statuses_and_time(scenes, ratios, args, seconds)


def statuses_and_time(scenes: list[dict], ratios: list[float], args: dict,
                      seconds: float) -> None:
    runs = [s for s in scenes if s["run"] == 0]
    print(f"status: " + ", ".join(f"{k} {sum(s['status'] == k for s in runs)}"
                                  for k in sorted({s['status'] for s in runs}))
          + f"; exit non-zero: {sum(s['exit_code'] != 0 for s in runs)}")
    if ratios:
        print(("same-input rerun" if args.get("rerun") else "repeat (run seeds 0, 1)")
              + f" ratio of final errors: {distribution(ratios)}; within 2x: "
              f"{sum(r <= 2 for r in ratios)}/{len(ratios)}")
    # (per run from the runs' own seconds: a merged file's saved total is one part's)
    runs_seconds = sum(s.get("seconds", 0.0) for s in scenes)
    print(f"time: {seconds:.0f} s for the command ({runs_seconds / max(len(scenes), 1):.0f} s "
          f"per run; runs {runs_seconds:.0f} s in all)")


if __name__ == "__main__":
    sys.exit(main())
