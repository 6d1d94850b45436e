"""Figures of a run (matplotlib, Agg): the loss, step times, the estimates'
trajectories, point sets and cameras at the start, the end and in the truth.

Each function takes plain data (lists, numpy arrays, dicts from result.json)
and writes one PNG; none needs Mitsuba.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

#: Colours of the three states compared in the figures.
STATE_COLOURS = {"start": "#999999", "end": "#1f5fbf", "refined": "#1f5fbf", "truth": "#2ca02c"}
#: Colours of the components of a colour estimate.
CHANNEL_COLOURS = ["#d62728", "#2ca02c", "#1f77b4"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_loss(loss: list[float | None], path: str | os.PathLike, *, title: str = "",
              step_seconds: list[float] | None = None) -> None:
    """The loss curve (log scale where positive) and, given ``step_seconds``,
    the steps per second below it."""
    plt = _pyplot()
    values = np.array([np.nan if v is None else v for v in loss], dtype=np.float64)
    rows = 2 if step_seconds else 1
    fig, axes = plt.subplots(rows, 1, figsize=(5, 3.2 if rows == 1 else 4.6), dpi=100,
                             squeeze=False, gridspec_kw={"height_ratios": [3, 1.3][:rows]})
    ax = axes[0, 0]
    if values.size:
        ax.plot(np.arange(1, values.size + 1), values, lw=1.2)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() > 0:
            ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if step_seconds:
        rate = 1.0 / np.maximum(np.asarray(step_seconds, dtype=np.float64), 1e-9)
        ax2 = axes[1, 0]
        ax2.plot(np.arange(1, rate.size + 1), rate, lw=1.0, color="#555555")
        ax2.set_ylabel("steps/s")
        ax2.grid(alpha=0.3)
        ax2.set_xlabel("iteration")
    else:
        ax.set_xlabel("iteration")
    _save(fig, path)


def plot_trajectory(key: str, steps: list[list[float]], path: str | os.PathLike, *,
                    truth: list[float] | None = None) -> None:
    """Each component of a small estimate over the steps (a colour's as red,
    green and blue curves), the truth as dashed lines, and the mean absolute
    error against it below when it is known."""
    plt = _pyplot()
    values = np.asarray(steps, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n = values.shape[1]
    has_truth = truth is not None and len(truth) == n
    fig, axes = plt.subplots(2 if has_truth else 1, 1, figsize=(5, 4.2 if has_truth else 2.8),
                             dpi=100, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.4][:2 if has_truth else 1]})
    ax = axes[0, 0]
    x = np.arange(values.shape[0])  # step 0 is the start
    for i in range(n):
        colour = CHANNEL_COLOURS[i] if n == 3 else None
        label = "RGB"[i] if n == 3 else (f"[{i}]" if n > 1 else "value")
        line, = ax.plot(x, values[:, i], lw=1.3, color=colour, label=label)
        if has_truth:
            ax.axhline(truth[i], ls="--", lw=1.0, color=line.get_color())
    ax.set_title(key, fontsize=9)
    ax.set_ylabel("value" + (" (dashed: truth)" if has_truth else ""))
    ax.grid(alpha=0.3)
    if n <= 8:
        ax.legend(fontsize=7, loc="best")
    if has_truth:
        err = np.abs(values - np.asarray(truth, dtype=np.float64)[None, :]).mean(axis=1)
        ax2 = axes[1, 0]
        ax2.plot(x, err, color="#444444", lw=1.2)
        if err.size and np.all(err > 0):
            ax2.set_yscale("log")
        ax2.set_ylabel("error")
        ax2.grid(alpha=0.3)
        ax2.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    _save(fig, path)


def _equal_3d(ax, points: np.ndarray) -> None:
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6)
    for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
        setter(c - half, c + half)


def rigid_fit(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation R (3, 3) that best maps centred points ``a`` onto centred
    ``b`` (Kabsch), both (N, 3) with the same points in the same order."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def plot_points(key: str, states: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Point sets (N, 3) of a geometry estimate at ``start``, ``end`` and in
    the ``truth``, in one 3D view (scene axes, y up). Where the sets hold the
    same points, each state's frame is drawn too: the start's axes carried by
    the rigid motion that best maps the start's points onto the state's
    (so a pose shows as three frames: start, estimate, truth)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(4.6, 4.2), dpi=100)
    ax = fig.add_subplot(projection="3d")
    every = []
    for name in ("start", "truth", "end"):
        pts = states.get(name)
        if pts is None or not len(pts):
            continue
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        every.append(pts)
        ax.scatter(pts[:, 0], pts[:, 2], pts[:, 1], s=2, alpha=0.3, label=name,
                   color=STATE_COLOURS[name])
    start = states.get("start")
    if start is not None and all(len(v) == len(start) for v in states.values()) and len(start) >= 3:
        start = np.asarray(start, dtype=np.float64)
        size = 0.6 * float(np.ptp(start, axis=0).max() or 1.0)
        for name, pts in states.items():
            pts = np.asarray(pts, dtype=np.float64)
            rotation, centre = rigid_fit(start, pts), pts.mean(axis=0)
            for axis, colour in zip(rotation.T, CHANNEL_COLOURS):
                tip = centre + size * axis
                ax.plot([centre[0], tip[0]], [centre[2], tip[2]], [centre[1], tip[1]], color=colour,
                        lw=2.0 if name != "start" else 1.0,
                        ls={"start": ":", "truth": "--"}.get(name, "-"))
    if every:
        _equal_3d(ax, np.concatenate(every)[:, [0, 2, 1]])
    ax.set_xlabel("x")
    ax.set_ylabel("z")
    ax.set_zlabel("y")
    ax.set_title(key, fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def frustum_lines(c2w: np.ndarray, size: float, aspect: float = 4 / 3,
                  focal: float = 1.2) -> list[np.ndarray]:
    """Line segments (2, 3) of a camera frustum: four edges from the centre to
    the corners of an image plane ``size`` in front (OpenCV convention: the
    camera looks along +z, y down), the plane's outline, and an "up" tick."""
    c2w = np.asarray(c2w, dtype=np.float64)
    centre = c2w[:3, 3]
    w, h = 0.5 * aspect / focal, 0.5 / focal
    local = np.array([[-w, -h, 1], [w, -h, 1], [w, h, 1], [-w, h, 1]]) * size
    corners = local @ c2w[:3, :3].T + centre
    lines = [np.stack([centre, c]) for c in corners]
    lines += [np.stack([corners[i], corners[(i + 1) % 4]]) for i in range(4)]
    top = (corners[0] + corners[1]) / 2
    up = top + (c2w[:3, :3] @ np.array([0.0, -h * 0.6, 0.0])) * size
    lines.append(np.stack([top, up]))
    return lines


def plot_cameras(poses: dict[str, dict[str, Any]], path: str | os.PathLike,
                 errors: dict[str, dict[str, Any]] | None = None) -> None:
    """Camera frustums at the ``start`` (grey), ``refined`` (blue) and in the
    ``truth`` (green), from ``poses``: state -> view id -> camera-to-world
    (4, 4) OpenCV; beside them, given ``errors`` (``{"start": ...,
    "refined": ...}``: view id -> ``rotation_deg``, ``position``), each
    camera's errors at the start and after refinement."""
    plt = _pyplot()
    has_errors = bool(errors and errors.get("refined"))
    fig = plt.figure(figsize=(9 if has_errors else 5, 4.4), dpi=100)
    ax = fig.add_subplot(1, 2 if has_errors else 1, 1, projection="3d")
    centres = np.array([np.asarray(m, dtype=np.float64)[:3, 3]
                        for state in poses.values() for m in state.values()]).reshape(-1, 3)
    spread = float(np.linalg.norm(centres.max(axis=0) - centres.min(axis=0))) if len(centres) else 1.0
    size = 0.12 * (spread if spread > 0 else 1.0)
    for state in ("start", "truth", "refined"):
        for i, (vid, m) in enumerate(sorted(poses.get(state, {}).items())):
            for seg in frustum_lines(m, size):
                ax.plot(seg[:, 0], seg[:, 2], seg[:, 1], color=STATE_COLOURS[state],
                        lw=1.0 if state != "start" else 0.8,
                        ls="--" if state == "start" else "-",
                        label=state if i == 0 and seg is not None else None)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    if len(centres):
        _equal_3d(ax, centres[:, [0, 2, 1]])
    ax.set_xlabel("x")
    ax.set_ylabel("z")
    ax.set_zlabel("y")
    ax.set_title("cameras", fontsize=9)
    if has_errors:
        ids = sorted(errors["refined"])
        x = np.arange(len(ids))
        ax2 = fig.add_subplot(1, 2, 2)
        for j, state in enumerate(("start", "refined")):
            rot = [(errors.get(state) or {}).get(v, {}).get("rotation_deg") or 0.0 for v in ids]
            ax2.bar(x + (j - 0.5) * 0.38, rot, width=0.38, color=STATE_COLOURS[state], label=state)
        ax2.set_xticks(x, ids, rotation=60, fontsize=7)
        ax2.set_ylabel("rotation error (deg)")
        ax2.legend(fontsize=7)
        ax2.grid(alpha=0.3, axis="y")
    _save(fig, path)
