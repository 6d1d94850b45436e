"""Gradient images on disk: ``gradients/index.json``, one PNG per image, and
``gradients/index.html`` to look at them alone.

The images themselves are computed by :mod:`invpbr.optimization.gradient_images`;
this module only holds what they are (:class:`GradientImage`) and writes them,
signed values on a diverging colour map (blue negative, white zero, red
positive), each on its own symmetric scale, which the index records.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import pictures
from .style import CSS


@dataclass
class GradientImage:
    """One gradient image.

    Attributes:
        stage: when it was computed (``"start"``, ``"end"``, or a free label).
        view: the sensor id rendered.
        key: the estimate (empty for the loss's image gradient).
        label: the direction (``"[0]"``, ``"camera tx"``, ...; empty if none).
        what: ``"dloss_dpixel"`` (dLoss/dpixel), ``"dimage"`` (dI/dθ,
            forward mode), ``"contribution"`` (dLoss/dpixel · dI/dθ summed
            over colour channels: the pixels that pull θ) or ``"texture"``
            (dLoss/dtexel of a texture or environment map, as an image).
        values: (H, W) signed values, or (H, W, 3) (shown as their channel sum).
        total: the sum of the values (for a contribution: dLoss/dθ), or None.
    """

    stage: str
    view: str
    key: str
    label: str
    what: str
    values: np.ndarray
    total: float | None = None

    @property
    def title(self) -> str:
        names = {"dloss_dpixel": "dLoss/dpixel", "dimage": "dI/dθ", "contribution": "contribution",
                 "texture": "dLoss/dtexel"}
        what = names.get(self.what, self.what)
        return " ".join(t for t in (what, self.key, self.label) if t)

    def signed_map(self) -> np.ndarray:
        """The values as one signed number per pixel (H, W)."""
        v = np.asarray(self.values, dtype=np.float64)
        return v.sum(axis=-1) if v.ndim == 3 else v


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("_") or "x"


def write_gradient_images(images: list[GradientImage], folder: str | os.PathLike, *,
                          title: str = "") -> Path:
    """Write ``images`` into ``folder``: a PNG each, ``index.json`` (stage,
    view, key, label, what, title, file, limit, sum per image) and
    ``index.html``.

    Returns:
        The path of index.json.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, used = [], set()
    for g in images:
        name = _file_name(f"{g.stage}_{g.view}_{g.what}_{g.key}_{g.label}")
        while name in used:
            name += "_"
        used.add(name)
        values = g.signed_map()
        img, limit = pictures.diverging(values)
        pictures.write_png(folder / f"{name}.png", img)
        entries.append({"stage": g.stage, "view": g.view, "key": g.key, "label": g.label,
                        "what": g.what, "title": g.title, "file": f"{name}.png",
                        "limit": float(limit), "sum": None if g.total is None else float(g.total),
                        "shape": list(values.shape)})
    (folder / "index.json").write_text(json.dumps(entries, indent=2))
    _write_index_html(entries, folder, title)
    return folder / "index.json"


#: What each kind of image shows, for the pages.
EXPLANATION = ("Signed values on a diverging map (blue negative, white zero, red positive), each "
               "image on its own scale (±limit). <b>dLoss/dpixel</b>: positive where the loss "
               "wants the render darker, negative where brighter. <b>dI/dθ</b>: how the render "
               "changes with one direction θ of an estimate (forward mode, colour channels "
               "summed). <b>contribution</b>: dLoss/dpixel · dI/dθ, the pixels that pull θ; its "
               "sum is dLoss/dθ (negative: the loss falls as θ grows). For textures and "
               "environment maps, <b>dLoss/dtexel</b>: the gradient itself as an image.")


def gradient_rows_html(entries: list[dict], prefix: str = "") -> str:
    """The images of ``index.json`` entries as HTML: per stage and view, a
    row with dLoss/dpixel, then one row per estimate direction (dI/dθ beside
    its contribution). ``prefix`` is put before each file name (a folder)."""
    esc = html.escape
    groups: dict[tuple[str, str], dict[tuple[str, str], list[dict]]] = {}
    for e in entries:
        rows = groups.setdefault((str(e.get("stage", "")), str(e.get("view", ""))), {})
        rows.setdefault((str(e.get("key", "")), str(e.get("label", ""))), []).append(e)
    parts = []
    for (stage, view), rows in groups.items():
        parts.append(f"<h3>{esc(stage)}, view {esc(view)}</h3><table>")
        for (key, label), items in rows.items():
            head = esc(f"{key} {label}".strip() if key else f"the loss {label}".strip())
            cells = []
            for e in items:
                extra = "" if e.get("sum") is None else f", sum {e['sum']:.3g}"
                caption = f"{esc(e.get('title', ''))}<br>±{e.get('limit', 0):.3g}{extra}"
                cells.append(f'<figure><img class="px" src="{esc(prefix + e["file"])}" '
                             f'alt="{esc(e.get("title", ""))}"><figcaption>{caption}'
                             "</figcaption></figure>")
            parts.append(f"<tr><th>{head}</th><td>{''.join(cells)}</td></tr>")
        parts.append("</table>")
    return "".join(parts)


def _write_index_html(entries: list[dict], folder: Path, title: str) -> None:
    esc = html.escape
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)} gradient "
            f"images</title><style>{CSS}</style></head><body><h1>{esc(title)}: gradient images"
            f"</h1><p>{EXPLANATION}</p>{gradient_rows_html(entries)}</body></html>")
    (folder / "index.html").write_text(page, encoding="utf-8")
