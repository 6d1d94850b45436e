"""report.html: what a run did, readable from disk in any browser (no server).

:func:`write_report` builds ``report.html`` in a result folder from the
folder alone (result.json and the files beside it), so a report can be
rebuilt at any time, also for folders written before reports existed
(``invpbr report OUT``). Its pictures go to ``report/`` in the folder and are
linked relatively; the page needs no script and nothing from the network.

It shows, in order: status and warnings (a result worse than its start says
so), errors against the truth beside the starting errors, held-out and
relighting metrics, gains, per view the photo, mask, start and end renders
with signed differences (diverging colour map, one scale per view), the loss
curve and steps per second, each estimate's trajectory (small values as
curves with the truth dashed; textures and environment maps at start and end;
point sets and cameras at start, end and in the truth), gradient images when
the folder has them (``gradients/index.json``), notes, settings and timings.

:func:`write_index` builds ``index.html`` over a folder of result folders
(a batch): one row per scene with its status, errors, time and a thumbnail.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import pictures, plots
from .style import CSS

#: Folder (inside a result folder) of the report's pictures.
PICTURES = "report"
#: Estimates with at most this many numbers are recorded at every step (trajectories).
TRAJECTORY_MAX = 16



def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _file_name(key: str) -> str:
    """The file name invpbr gives a key or view id (what result writing uses)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return _esc(v)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def load_result_json(folder: str | os.PathLike) -> dict[str, Any]:
    """result.json of a result folder.

    Raises:
        FileNotFoundError: the folder has no result.json.
        ValueError: result.json is not a JSON object (the message names the file).
    """
    path = Path(folder) / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; a result folder holds the result.json "
                                "that `invpbr run` writes")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def estimate_kind(key: str, entry: Any, data: dict[str, Any]) -> str:
    """The kind of an estimate: result.json's ``kinds`` where written, else
    guessed from its ``parameters`` entry (older folders)."""
    kind = (data.get("kinds") or {}).get(key)
    if kind:
        return str(kind)
    if isinstance(entry, str):
        return "envmap" if entry and "emitter" not in key and key.endswith(".data") \
            and "bsdf" not in key else "texture"
    if isinstance(entry, dict):
        if "points" in entry:
            return "pose" if "translation" in entry else "shape"
        return "camera"
    return "value"


# -- the views ---------------------------------------------------------------------------


def _load_linear(path: Path) -> np.ndarray | None:
    """A linear image (EXR through Mitsuba's Bitmap; PNG/JPEG decoded from sRGB)."""
    if not path.is_file():
        return None
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return pictures.linear_from_srgb8(pictures.read_png(path))
    from ..capture.images import load_image

    return load_image(path)


def _split_strip(strip: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Photo and render from an older folder's ``renders/<view>.png`` (photo |
    render | difference with 2-pixel gaps), linear; None if it is not one."""
    h, total = strip.shape[:2]
    w = (total - 4) // 3
    if w <= 0 or 3 * w + 4 != total:
        return None
    lin = pictures.linear_from_srgb8(strip)
    return lin[:, :w], lin[:, w + 2: 2 * w + 2]


def view_ids(folder: Path, data: dict[str, Any]) -> list[str]:
    """The result's view ids: result.json's ``views`` where written, else the
    renders' file names (older folders)."""
    views = data.get("views")
    if isinstance(views, list) and views:
        return [str(v["id"] if isinstance(v, dict) else v) for v in views]
    ids = set(data.get("psnr") or {}) | set(data.get("held_out") or [])
    if not ids and (folder / "renders").is_dir():
        ids = {p.stem for p in (folder / "renders").glob("*.exr")}
    return sorted(ids)


def _view_images(folder: Path, vid: str) -> dict[str, np.ndarray | None]:
    name = _file_name(vid)
    renders = folder / "renders"
    out = {"end": _load_linear(renders / f"{name}.exr"),
           "start": _load_linear(renders / "start" / f"{name}.exr"),
           "photo": _load_linear(renders / "photos" / f"{name}.png"),
           "mask": None}
    mask_path = renders / "masks" / f"{name}.png"
    if mask_path.is_file():
        out["mask"] = pictures.read_png(mask_path)[..., 0] > 127
    strip_path = renders / f"{name}.png"
    if (out["photo"] is None or out["end"] is None) and strip_path.is_file():
        split = _split_strip(pictures.read_png(strip_path))
        if split is not None:
            out["photo"] = out["photo"] if out["photo"] is not None else split[0]
            out["end"] = out["end"] if out["end"] is not None else split[1]
    return out


def _view_row(folder: Path, vid: str, data: dict[str, Any]) -> str:
    """One view's row: photo, mask, start, start difference, end, end difference."""
    images = _view_images(folder, vid)
    base = f"{PICTURES}/views/{_file_name(vid)}"
    cells = []

    def picture(name: str, img: np.ndarray, caption: str) -> None:
        pictures.write_png(folder / f"{base}_{name}.png", img)
        cells.append(f'<figure><img class="px" src="{_esc(base)}_{name}.png" alt="{_esc(vid)} '
                     f'{name}"><figcaption>{caption}</figcaption></figure>')

    photo = images["photo"]
    if photo is not None:
        picture("photo", pictures.srgb8(photo), "photo")
    if images["mask"] is not None:
        picture("mask", pictures.mask_picture(images["mask"]), "mask (dark: left out)")
    diffs = {s: pictures.signed_difference(images[s], photo) for s in ("start", "end")
             if images[s] is not None and photo is not None and images[s].shape == photo.shape}
    limit = max((pictures.symmetric_limit(d) for d in diffs.values()), default=1.0)
    psnr = {"start": (data.get("psnr_initial") or {}).get(vid), "end": (data.get("psnr") or {}).get(vid)}
    if vid in (data.get("held_out") or []):
        psnr = {"start": (data.get("novel_view_psnr_initial") or {}).get(vid),
                "end": (data.get("novel_view_psnr") or {}).get(vid)}
    for state in ("start", "end"):
        if images[state] is None:
            continue
        picture(state, pictures.srgb8(images[state]),
                f"{state} render" + (f", PSNR {_fmt(psnr[state], 4)} dB" if psnr[state] else ""))
        if state in diffs:
            img, _ = pictures.diverging(diffs[state], limit)
            picture(f"{state}_diff", img, f"{state} − photo (red: brighter), ±{limit:.3g}")
    held = " (held out)" if vid in (data.get("held_out") or []) else ""
    return f"<tr><th>{_esc(vid)}{held}</th><td class=\"views\">{''.join(cells)}</td></tr>"


# -- numbers -----------------------------------------------------------------------------


def _change(start: float | None, end: float | None, lower_is_better: bool = True) -> str:
    if start is None or end is None:
        return ""
    if start == end:
        return "unchanged"
    better = end < start if lower_is_better else end > start
    cls = "better" if better else "worsened"
    if lower_is_better and end > 0 and start > 0:
        ratio = start / end
        text = f"{ratio:.3g}x smaller" if ratio > 1 else f"{1 / ratio:.3g}x LARGER"
    else:
        text = f"{end - start:+.3g}"
    return f'<span class="{cls}">{text}</span>'


def error_rows(data: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(what, start, end) for every error result.json holds: parameters,
    scale-invariant albedo, geometry, cameras (mean over cameras) and gains
    (largest)."""
    rows = []
    start, end = data.get("initial_errors") or {}, data.get("errors") or {}
    for key in end:
        rows.append((key, _number(start.get(key)), _number(end.get(key))))
    for key, v in (data.get("errors_scale_invariant") or {}).items():
        rows.append((f"{key} (scale-invariant)", None, _number(v)))
    g_start = data.get("geometry_errors_initial") or {}
    for key, d in (data.get("geometry_errors") or {}).items():
        for name, v in d.items():
            rows.append((f"{key}: {name}", _number((g_start.get(key) or {}).get(name)), _number(v)))
    cams, cams0 = data.get("camera_errors") or {}, data.get("camera_errors_initial") or {}
    for name in ("rotation_deg", "position"):
        vals = [_number(e.get(name)) for e in cams.values()]
        vals0 = [_number(e.get(name)) for e in cams0.values()]
        vals, vals0 = [v for v in vals if v is not None], [v for v in vals0 if v is not None]
        if vals:
            rows.append((f"cameras: {name} (mean of {len(vals)})",
                         float(np.mean(vals0)) if vals0 else None, float(np.mean(vals))))
    gains, gains0 = data.get("gain_errors") or {}, data.get("gain_errors_initial") or {}
    if gains:
        g = [v for v in map(_number, gains.values()) if v is not None]
        g0 = [v for v in map(_number, gains0.values()) if v is not None]
        rows.append(("gains: largest relative error", max(g0) if g0 else None,
                     max(g) if g else None))
    return rows


def warnings_of(data: dict[str, Any]) -> list[str]:
    """What a reader must not miss: a run that did not complete, a loss or an
    error that ended above its start, held-out views or relighting that got
    worse, and the warnings the run recorded."""
    out = [str(w) for w in data.get("warnings") or []]
    status = data.get("status", "unknown")
    if status not in ("completed", "stopped"):
        out.append(f"the run ended as {status!r}")
    loss = [v for v in data.get("loss") or [] if isinstance(v, (int, float))]
    if len(loss) >= 2 and loss[-1] > loss[0]:
        out.append(f"the last step's loss ({loss[-1]:.4g}) is above the first step's "
                   f"({loss[0]:.4g}): the run made the fit worse")
    for what, start, end in error_rows(data):
        if start is not None and end is not None and end > start * 1.0001 and end - start > 1e-9:
            out.append(f"{what}: the error ended above its start ({end:.4g} > {start:.4g})")
    for vid, end in (data.get("novel_view_psnr") or {}).items():
        start = (data.get("novel_view_psnr_initial") or {}).get(vid)
        if _number(start) is not None and _number(end) is not None and end < start:
            out.append(f"held-out view {vid}: PSNR fell from {start:.2f} to {end:.2f} dB")
    return out


def _table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{_esc(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(rows_cell for rows_cell in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _errors_section(data: dict[str, Any]) -> str:
    rows = [[f"<td>{_esc(w)}</td>", f'<td class="num">{_fmt(s)}</td>',
             f'<td class="num">{_fmt(e)}</td>', f"<td>{_change(s, e)}</td>"]
            for w, s, e in error_rows(data)]
    if not rows:
        return "<p>No errors against a truth (the scene folder has no truth).</p>"
    return _table(["estimate", "start", "end", "change"], rows)


def _metrics_section(data: dict[str, Any]) -> str:
    parts = []
    for key, title in (("psnr", "PSNR of the fitted views (dB)"),
                       ("novel_view_psnr", "Held-out views: PSNR (dB)")):
        end, start = data.get(key) or {}, data.get(key + "_initial") or {}
        if end:
            rows = [[f"<td>{_esc(v)}</td>", f'<td class="num">{_fmt(_number(start.get(v)))}</td>',
                     f'<td class="num">{_fmt(_number(p))}</td>',
                     f"<td>{_change(_number(start.get(v)), _number(p), lower_is_better=False)}</td>"]
                    for v, p in end.items()]
            parts.append(f"<h3>{title}</h3>" + _table(["view", "start", "end", "change"], rows))
    rl, rl0 = data.get("relight_psnr") or {}, data.get("relight_psnr_initial") or {}
    if rl:
        rows = []
        for m, d in rl.items():
            s, e = _number((rl0.get(m) or {}).get("mean")), _number(d.get("mean"))
            rows.append([f"<td>{_esc(m)}</td>", f'<td class="num">{_fmt(s)}</td>',
                         f'<td class="num">{_fmt(e)}</td>',
                         f"<td>{_change(s, e, lower_is_better=False)}</td>"])
        parts.append("<h3>Relighting: mean PSNR over the views (dB)</h3>"
                     + _table(["environment map", "start", "end", "change"], rows))
    gains = data.get("gains") or {}
    if gains:
        errs = data.get("gain_errors") or {}
        rows = [[f"<td>{_esc(v)}</td>", "<td>" + ", ".join(f"{x:.4f}" for x in g) + "</td>",
                 f'<td class="num">{_fmt(_number(errs.get(v)))}</td>'] for v, g in gains.items()]
        parts.append("<h3>Gains of the photos</h3>"
                     + _table(["view", "gain (R, G, B)", "relative error"], rows))
    return "".join(parts)


# -- the estimates -----------------------------------------------------------------------


def _swatch(values: list[float] | None, label: str) -> str:
    if values is None or len(values) != 3:
        return ""
    r, g, b = pictures.srgb8(np.asarray(values, dtype=np.float64).reshape(1, 1, 3))[0, 0]
    return (f'<span class="swatch" style="background: rgb({r}, {g}, {b})" '
            f'title="{_esc(label)}"></span>{_esc(label)} ')


def _value_block(folder: Path, key: str, entry: Any, data: dict[str, Any]) -> str:
    trajectory = (data.get("trajectory") or {}).get(key)
    truth = (data.get("truth") or {}).get(key)
    start = trajectory[0] if trajectory else (data.get("initial_parameters") or {}).get(key)
    end = entry if isinstance(entry, list) else None

    def show(v):
        return "–" if v is None else ", ".join(f"{x:.4g}" for x in v)

    text = (f"<p>start {show(start)} → end {show(end)}"
            + (f" (truth {show(truth)})" if truth is not None else "") + "</p>")
    if end is not None and len(end) == 3:
        text += "<p>" + _swatch(start, "start") + _swatch(end, "end") + _swatch(truth, "truth") + "</p>"
    if trajectory and len(trajectory) > 1:
        rel = f"{PICTURES}/estimates/{_file_name(key)}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        plots.plot_trajectory(key, trajectory, folder / rel, truth=truth)
        text += f'<img class="plot" src="{_esc(rel)}" alt="trajectory of {_esc(key)}">'
    return text


def _texture_block(folder: Path, key: str, entry: str, kind: str) -> str:
    name = Path(entry).stem
    figures = []
    for state, path in (("start", folder / "textures" / "start" / f"{name}.exr"),
                        ("end", folder / entry)):
        img = _load_linear(path) if path.suffix.lower() == ".exr" else None
        if img is None:
            img = _load_linear(path.with_suffix(".png"))
        if img is None:
            continue
        exposure = pictures.hdr_exposure(img)
        rel = f"{PICTURES}/estimates/{_file_name(key)}_{state}.png"
        pictures.write_png(folder / rel, pictures.srgb8(img, exposure=exposure))
        note = f", shown x{exposure:.3g}" if exposure != 1.0 else ""
        figures.append(f'<figure><img class="px" src="{_esc(rel)}" alt="{_esc(key)} {state}">'
                       f"<figcaption>{state} ({img.shape[1]}x{img.shape[0]}{note})"
                       "</figcaption></figure>")
    return "".join(figures) or "<p>(no texture file found)</p>"


def _geometry_block(folder: Path, key: str, entry: dict, data: dict[str, Any]) -> str:
    text = ""
    if "translation" in entry:
        t = ", ".join(f"{v:.4g}" for v in entry["translation"])
        text += (f"<p>pose: translation ({t}), rotation {entry.get('rotation_deg', 0):.3g} deg"
                 f"{', scale %.4g' % entry['scale'] if entry.get('scale', 1.0) != 1.0 else ''}</p>")
    meshes = entry.get("meshes") or []
    if meshes:
        text += "<p>meshes: " + ", ".join(f'<a href="{_esc(m)}">{_esc(m)}</a>' for m in meshes) + "</p>"
    preview = (data.get("previews") or {}).get(key)
    if preview:
        rel = f"{PICTURES}/estimates/{_file_name(key)}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        plots.plot_points(key, {k: np.asarray(v) for k, v in preview.items()}, folder / rel)
        text += (f'<img class="plot" src="{_esc(rel)}" alt="{_esc(key)} points">'
                 "<p>points: grey start, blue estimate, green truth; where they are the same "
                 "points, frames (x red, y green, z blue): dotted start, solid estimate, "
                 "dashed truth</p>")
    return text


def _camera_block(folder: Path, data: dict[str, Any]) -> str:
    poses = data.get("camera_poses") or {}
    if not poses.get("refined"):
        return "<p>refined cameras: " + ('<a href="transforms.json">transforms.json</a>'
                                         if (folder / "transforms.json").is_file() else "–") + "</p>"
    rel = f"{PICTURES}/estimates/cameras.png"
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    plots.plot_cameras(poses, folder / rel, errors={"start": data.get("camera_errors_initial"),
                                                    "refined": data.get("camera_errors")})
    return (f'<img class="plot" style="max-width: 900px" src="{_esc(rel)}" alt="cameras">'
            '<p>grey dashed: start, blue: refined, green: truth; refined cameras in '
            '<a href="transforms.json">transforms.json</a></p>')


def _estimates_section(folder: Path, data: dict[str, Any]) -> str:
    parts = []
    for key, entry in (data.get("parameters") or {}).items():
        kind = estimate_kind(key, entry, data)
        if kind == "camera" or (isinstance(entry, dict) and "points" not in entry):
            body = _camera_block(folder, data)
        elif isinstance(entry, str):
            body = _texture_block(folder, key, entry, kind)
        elif isinstance(entry, dict):
            body = _geometry_block(folder, key, entry, data)
        else:
            body = _value_block(folder, key, entry, data)
        parts.append(f"<h3>{_esc(key)} <small>({_esc(kind)})</small></h3>{body}")
    return "".join(parts) or "<p>No estimates.</p>"


def _gradients_section(folder: Path) -> str:
    """The gradient images of ``gradients/index.json`` (see
    :mod:`invpbr.optimization.gradient_images`), per stage and view."""
    from .gradients import EXPLANATION, gradient_rows_html

    index_path = folder / "gradients" / "index.json"
    if not index_path.is_file():
        return ""
    try:
        entries = json.loads(index_path.read_text())
    except json.JSONDecodeError:
        return f'<p class="warn">{_esc(index_path)}: not valid JSON</p>'
    return f"<p>{EXPLANATION}</p>" + gradient_rows_html(entries, "gradients/")


# -- the page ----------------------------------------------------------------------------


def _timings(data: dict[str, Any]) -> list[list[str]]:
    it = data.get("iterations")
    spi = _number(data.get("seconds_per_iteration"))
    rows = [("iterations", it), ("seconds per iteration", spi),
            ("seconds per iteration after the first 3", _number(data.get("seconds_per_iteration_steady"))),
            ("loop time (s)", spi * it if spi is not None and isinstance(it, int) else None),
            ("seconds before the loop (start renders, gradient images)",
             _number((data.get("timings") or {}).get("before_loop"))),
            ("seconds after the loop (final renders, evaluation, gradient images)",
             _number((data.get("timings") or {}).get("after_loop"))),
            ("peak memory (MiB)", _number(data.get("peak_memory_mb"))),
            ("integrator", data.get("integrator")), ("variant", data.get("variant")),
            ("backend", data.get("backend"))]
    return [[f"<td>{_esc(k)}</td>", f'<td class="num">{_fmt(v)}</td>'] for k, v in rows
            if v not in (None, "")]


def render_report_html(folder: Path, data: dict[str, Any]) -> str:
    """The report page of the result folder ``folder`` (writes its pictures)."""
    name = data.get("scene") or folder.name
    status = str(data.get("status", "unknown"))
    warns = warnings_of(data)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(name)}: invpbr "
             f"report</title><style>{CSS}</style></head><body>",
             f"<h1>{_esc(name)}</h1><p><span class='status {_esc(status)}'>{_esc(status)}</span> "
             f"after {_esc(data.get('iterations', '?'))} iterations · "
             f"{_fmt(_number(data.get('seconds_per_iteration')))} s/iteration · "
             f"{_esc(data.get('integrator', ''))} · {_esc(data.get('variant', ''))}"
             + (" · <span class='status worse'>worse than its start</span>"
                if any("above its start" in w or "worse" in w for w in warns) else "") + "</p>"]
    parts += [f'<div class="warn">{_esc(w)}</div>' for w in warns]
    parts += [f'<div class="note">{_esc(n)}</div>' for n in data.get("notes") or []]
    parts.append("<h2>Errors against the truth</h2>" + _errors_section(data))
    ids = view_ids(folder, data)
    if ids:
        rows = "".join(_view_row(folder, vid, data) for vid in ids)
        parts.append("<h2>Views: photo, mask, start and end renders, differences</h2>"
                     f"<table>{rows}</table>")
    metrics = _metrics_section(data)
    if metrics:
        parts.append("<h2>Metrics</h2>" + metrics)
    (folder / PICTURES).mkdir(parents=True, exist_ok=True)
    plots.plot_loss(data.get("loss") or [], folder / PICTURES / "loss.png", title=str(name),
                    step_seconds=data.get("step_seconds"))
    parts.append(f'<h2>Loss</h2><img class="plot" src="{PICTURES}/loss.png" alt="loss curve">')
    parts.append("<h2>Estimates</h2>" + _estimates_section(folder, data))
    gradients = _gradients_section(folder)
    if gradients:
        parts.append("<h2>Gradient images</h2>" + gradients)
    parts.append("<h2>Timings</h2>" + _table(["", ""], _timings(data)))
    settings = json.dumps(data.get("settings") or {}, indent=2)
    parts.append(f"<h2>Settings</h2><details><summary>as run</summary><pre>{_esc(settings)}"
                 "</pre></details>")
    files = [p for p in ("result.json", "scene.xml", "transforms.json", "loss.png")
             if (folder / p).is_file()]
    parts.append("<p>Files: " + ", ".join(f'<a href="{p}">{p}</a>' for p in files) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(folder: str | os.PathLike) -> Path:
    """Write ``report.html`` (and its pictures under ``report/``) into a result
    folder, from result.json and the files beside it.

    Returns:
        The report's path.

    Raises:
        FileNotFoundError: ``folder`` has no result.json.
        ValueError: result.json cannot be read.
    """
    folder = Path(folder)
    data = load_result_json(folder)
    import shutil

    shutil.rmtree(folder / PICTURES, ignore_errors=True)
    page = render_report_html(folder, data)
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


# -- a batch -----------------------------------------------------------------------------


def result_folders(root: str | os.PathLike) -> list[Path]:
    """Sub-folders of ``root`` that hold a result.json, sorted."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "result.json").is_file())


def _thumbnail(folder: Path, data: dict[str, Any]) -> str | None:
    ids = view_ids(folder, data)
    if not ids:
        return None
    name = _file_name(ids[0])
    for rel in (f"{PICTURES}/views/{name}_end.png", f"renders/{name}.png"):
        if (folder / rel).is_file():
            return rel
    return None


def write_index(root: str | os.PathLike, rows: list[dict[str, Any]] | None = None) -> Path:
    """Write ``index.html`` over the result folders in ``root`` (a batch): one
    row per scene with its status, errors (start → end), time and a thumbnail,
    linking to each scene's report.

    Args:
        root: the batch's output folder.
        rows: the batch's summary rows (``summary.json``; scenes that failed
            without a result folder appear from them); default: read
            ``root/summary.json`` where it exists.
    """
    root = Path(root)
    if rows is None and (root / "summary.json").is_file():
        rows = json.loads((root / "summary.json").read_text())
    by_scene = {r["scene"]: r for r in rows or []}
    names = sorted(set(by_scene) | {p.name for p in result_folders(root)})
    body = []
    for name in names:
        folder, row = root / name, by_scene.get(name, {})
        data = load_result_json(folder) if (folder / "result.json").is_file() else {}
        status = str(row.get("status") or data.get("status", "failed"))
        if data and any("above its start" in w for w in warnings_of(data)):
            status_html = f"<span class='status worse'>{_esc(status)}, worse than its start</span>"
        else:
            status_html = f"<span class='status {_esc(status)}'>{_esc(status)}</span>"
        errs = "<br>".join(f"{_esc(w)}: {_fmt(s)} → {_fmt(e)}" for w, s, e in error_rows(data))
        seconds = row.get("seconds")
        if seconds is None and _number(data.get("seconds_per_iteration")) is not None:
            seconds = data["seconds_per_iteration"] * (data.get("iterations") or 0)
        thumb = _thumbnail(folder, data) if data else None
        link = f"{name}/report.html" if (folder / "report.html").is_file() else None
        title = f'<a href="{_esc(link)}">{_esc(name)}</a>' if link else _esc(name)
        img = f'<img class="px" src="{_esc(name)}/{_esc(thumb)}" alt="{_esc(name)}">' if thumb else ""
        message = f"<br><small>{_esc(row.get('message'))}</small>" if row.get("message") else ""
        body.append(f"<tr><td>{title}</td><td>{status_html}{message}</td><td>{errs}</td>"
                    f'<td class="num">{_fmt(_number(seconds), 3)}</td><td>{img}</td></tr>')
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>invpbr batch: "
            f"{_esc(root.name)}</title><style>{CSS}</style></head><body>"
            f"<h1>{_esc(root.name)}: {len(names)} scenes</h1><table><tr><th>scene</th>"
            "<th>status</th><th>errors (start → end)</th><th>seconds</th><th>first view</th></tr>"
            + "".join(body) + "</table></body></html>")
    path = root / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def rebuild_reports(path: str | os.PathLike) -> list[Path]:
    """``invpbr report PATH``: the report of a result folder, or the reports of
    every result folder in PATH and their index page.

    Raises:
        FileNotFoundError: PATH is neither a result folder nor holds any.
    """
    path = Path(path)
    if (path / "result.json").is_file():
        return [write_report(path)]
    if not path.is_dir() or not (result_folders(path) or (path / "summary.json").is_file()):
        raise FileNotFoundError(f"{path}: neither a result folder (no result.json) nor a folder "
                                "of result folders")
    written = [write_report(p) for p in result_folders(path)]
    return written + [write_index(path)]
