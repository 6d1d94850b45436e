"""Watching a run while it goes.

:class:`LiveState` is an ``optimize`` callback that keeps what a person
watching wants to see: the loss of every step, steps per second, the current
errors against the truth, and every few seconds the current renders of some
views beside their photos (``StepInfo.render``: one low-spp render per view,
so the cost is bounded by ``render_every``, not paid every step).

:class:`LiveServer` serves that state as a page on this machine (standard
library ``http.server``, on 127.0.0.1 by default): ``/`` is the page, which
polls ``/state.json`` and redraws its loss curve (SVG) and images;
``/photo/<i>.png`` and ``/render/<i>.png`` are the views' pictures;
``/result/...`` serves the result folder once the run has written it (the
report). ``invpbr run DIR --watch [--port P]`` uses both;
:func:`invpbr.notebook.live` draws the same state in a Jupyter figure.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from . import pictures


class LiveState:
    """The state of a running optimization, updated by calling it with each
    ``StepInfo`` (it is an ``optimize`` callback; it never stops the run).

    Args:
        problem: the problem being optimized (its views' photos and ids).
        render_every: seconds between refreshes of the renders and errors.
        views: how many views to show (the first ones).
        name: shown as the page's title (default: the problem's name).
    """

    def __init__(self, problem, *, render_every: float = 2.0, views: int = 4,
                 name: str | None = None):
        self.name = name or getattr(problem, "name", "invpbr")
        self.view_ids = [v.id for v in problem.views][:max(1, int(views))]
        self.photos = {v.id: pictures.png_bytes(pictures.shrink(pictures.srgb8(v.photo)))
                       for v in problem.views if v.id in self.view_ids}
        self.photo_arrays = {v.id: v.photo for v in problem.views if v.id in self.view_ids}
        self.render_every = float(render_every)
        self.lock = threading.Lock()
        self.loss: list[float | None] = []
        self.times: deque[float] = deque(maxlen=20)
        self.errors: dict[str, float] = {}
        self.renders: dict[str, bytes] = {}
        self.render_arrays: dict[str, np.ndarray] = {}
        self.render_version = 0
        self.render_iteration: int | None = None
        self.status = "starting"
        self.started = time.perf_counter()
        self.last_refresh = -math.inf
        self.result_folder: Path | None = None

    def __call__(self, info) -> None:
        now = time.perf_counter()
        with self.lock:
            self.loss.append(float(info.loss) if math.isfinite(info.loss) else None)
            self.times.append(now)
            self.status = "running"
        if now - self.last_refresh >= self.render_every or info.iteration == 0:
            self.refresh(info)
            self.last_refresh = time.perf_counter()

    def refresh(self, info) -> None:
        """Render the shown views and compute the errors now."""
        renders, arrays = {}, {}
        if getattr(info, "render", None) is not None:
            for vid in self.view_ids:
                image = info.render(vid)
                arrays[vid] = image
                renders[vid] = pictures.png_bytes(pictures.shrink(pictures.srgb8(image)))
        errors = info.errors() if getattr(info, "errors", None) is not None else {}
        with self.lock:
            if renders:
                self.renders, self.render_arrays = renders, arrays
                self.render_version += 1
                self.render_iteration = info.iteration
            self.errors = {k: float(v) for k, v in errors.items()}

    def steps_per_second(self) -> float | None:
        with self.lock:
            if len(self.times) < 2:
                return None
            span = self.times[-1] - self.times[0]
            return (len(self.times) - 1) / span if span > 0 else None

    def finish(self, status: str, result_folder: str | Path | None = None, *,
               result=None) -> None:
        """Mark the run as over (``status`` as in the result); the page links
        the result folder's report when given, and shows the ``result``'s final
        renders and errors when given."""
        renders = {} if result is None else {vid: image for vid, image in result.renders.items()
                                             if vid in self.view_ids}
        encoded = {vid: pictures.png_bytes(pictures.shrink(pictures.srgb8(image)))
                   for vid, image in renders.items()}
        with self.lock:
            self.status = status
            self.result_folder = Path(result_folder) if result_folder is not None else None
            if result is not None:
                self.errors = {k: float(v) for k, v in result.errors.items()}
                self.loss = [float(v) for v in result.loss]
            if renders:
                self.renders, self.render_arrays = encoded, renders
                self.render_version += 1
                self.render_iteration = len(self.loss) - 1

    def snapshot(self) -> dict[str, Any]:
        """The state as JSON-ready data (what ``/state.json`` returns)."""
        rate = self.steps_per_second()
        with self.lock:
            report = (self.result_folder is not None
                      and (self.result_folder / "report.html").is_file())
            return {"name": self.name, "status": self.status, "steps": len(self.loss),
                    "loss": list(self.loss), "steps_per_second": rate,
                    "seconds": time.perf_counter() - self.started, "errors": dict(self.errors),
                    "views": list(self.view_ids), "render_version": self.render_version,
                    "render_iteration": self.render_iteration,
                    "report": "result/report.html" if report else None}


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>invpbr live</title>
<link rel="icon" href="data:,">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
#loss { border: 1px solid #ccc; background: #fff; }
.view { display: inline-block; margin: 0 12px 12px 0; vertical-align: top; }
.view img { image-rendering: pixelated; width: 160px; border: 1px solid #ccc; }
td, th { padding: 2px 8px; text-align: left; } td.num { text-align: right; }
.status { padding: 1px 8px; border-radius: 4px; color: #fff; background: #3a6ab0; }
</style></head><body>
<h1 id="title">invpbr</h1>
<p><span class="status" id="status">connecting</span> <span id="steps"></span>
 · <span id="rate"></span> · <span id="loss_now"></span> <span id="report"></span></p>
<svg id="loss" width="560" height="220" viewBox="0 0 560 220">
 <polyline id="curve" fill="none" stroke="#1f5fbf" stroke-width="1.5" points=""/>
 <text id="ymax" x="4" y="14" font-size="11"></text><text id="ymin" x="4" y="214" font-size="11"></text>
</svg>
<h2>Current renders (right) against the photos (left)</h2><div id="views"></div>
<h2>Errors against the truth</h2><table id="errors"></table>
<script>
"use strict";
let shownVersion = -1, built = false;
function esc(t) { const d = document.createElement("span"); d.textContent = String(t); return d.innerHTML; }
function fmt(v) { return (v === null || v === undefined) ? "–" : Number(v).toPrecision(4); }
function drawLoss(loss) {
  const pts = [];
  const vals = loss.filter(v => v !== null && v > 0);
  if (!vals.length) return;
  const lo = Math.log(Math.min(...vals)), hi = Math.log(Math.max(...vals));
  const span = (hi - lo) || 1, n = Math.max(loss.length - 1, 1);
  loss.forEach((v, i) => {
    if (v === null || v <= 0) return;
    pts.push((30 + 520 * i / n).toFixed(1) + "," + (205 - 190 * (Math.log(v) - lo) / span).toFixed(1));
  });
  document.getElementById("curve").setAttribute("points", pts.join(" "));
  document.getElementById("ymax").textContent = fmt(Math.exp(hi));
  document.getElementById("ymin").textContent = fmt(Math.exp(lo));
}
function buildViews(views) {
  const box = document.getElementById("views");
  for (const [i, v] of views.entries()) {
    const d = document.createElement("div");
    d.className = "view";
    d.innerHTML = '<div>' + esc(v) + '</div><img alt="photo" src="photo/' + i + '.png"> ' +
      '<img alt="render" id="render' + i + '" src="photo/' + i + '.png">';
    box.appendChild(d);
  }
  built = true;
}
async function poll() {
  try {
    const r = await fetch("state.json", {cache: "no-store"});
    const s = await r.json();
    document.title = s.name + ": invpbr live";
    document.getElementById("title").textContent = s.name;
    document.getElementById("status").textContent = s.status;
    document.getElementById("steps").textContent = s.steps + " steps, " + s.seconds.toFixed(1) + " s";
    document.getElementById("rate").textContent = fmt(s.steps_per_second) + " steps/s";
    document.getElementById("loss_now").textContent = "loss " + fmt(s.loss[s.loss.length - 1]);
    if (s.report) document.getElementById("report").innerHTML = ' · <a href="' + s.report + '">report</a>';
    drawLoss(s.loss);
    if (!built) buildViews(s.views);
    if (s.render_version !== shownVersion && s.render_version > 0) {
      s.views.forEach((v, i) => {
        document.getElementById("render" + i).src = "render/" + i + ".png?v=" + s.render_version;
      });
      shownVersion = s.render_version;
    }
    const rows = Object.entries(s.errors).map(([k, v]) =>
      "<tr><td>" + esc(k) + '</td><td class="num">' + fmt(v) + "</td></tr>");
    document.getElementById("errors").innerHTML = rows.join("") || "<tr><td>(no truth)</td></tr>";
    if (s.status === "running" || s.status === "starting") setTimeout(poll, 500);
  } catch (e) {
    document.getElementById("status").textContent = "run over (server stopped)";
  }
}
poll();
</script></body></html>
"""


def _handler(state: LiveState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: the run prints its own progress
            pass

        def _send(self, body: bytes, content_type: str, code: int = 200) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = unquote(urlparse(self.path).path)
            if path in ("/", "/index.html"):
                return self._send(PAGE.encode(), "text/html; charset=utf-8")
            if path == "/state.json":
                return self._send(json.dumps(state.snapshot()).encode(), "application/json")
            for prefix, images in (("/photo/", state.photos), ("/render/", state.renders)):
                if path.startswith(prefix) and path.endswith(".png"):
                    try:
                        vid = state.view_ids[int(path[len(prefix):-4])]
                    except (ValueError, IndexError):
                        break
                    with state.lock:
                        body = images.get(vid) or state.photos.get(vid)
                    return self._send(body, "image/png")
            if path.startswith("/result/") and state.result_folder is not None:
                return self._send_result_file(path[len("/result/"):])
            self._send(b"not found", "text/plain", 404)

        def _send_result_file(self, rel: str) -> None:
            root = state.result_folder.resolve()
            target = (root / rel).resolve()
            if root not in target.parents or not target.is_file():
                return self._send(b"not found", "text/plain", 404)
            types = {".html": "text/html; charset=utf-8", ".png": "image/png",
                     ".json": "application/json"}
            self._send(target.read_bytes(), types.get(target.suffix, "application/octet-stream"))

    return Handler


class LiveServer:
    """Serves a :class:`LiveState` as a page, from a background thread.

    Args:
        state: what to serve.
        host: the address to listen on (127.0.0.1: this machine only).
        port: the port (0: any free one; :attr:`url` says which).

    Raises:
        OSError: the port is taken (the message names it).
    """

    def __init__(self, state: LiveState, *, host: str = "127.0.0.1", port: int = 8765):
        try:
            self.server = ThreadingHTTPServer((host, int(port)), _handler(state))
        except OSError as e:
            raise OSError(f"invpbr live view: cannot listen on {host}:{port} ({e.strerror}); "
                          "choose another --port") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="invpbr-live")

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> "LiveServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
