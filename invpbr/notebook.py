"""Watching a run from Jupyter: a callback that redraws one figure in place.

::

    monitor = invpbr.notebook.live(problem)
    result = invpbr.optimize(problem, callback=monitor)
    monitor.finish(result)          # the last state, drawn once more

The figure shows the loss curve, steps per second, the current errors against
the truth and, for the first views, the photo above the current render. It
is redrawn every ``every`` seconds (each redraw renders those views once at
low spp, see ``StepInfo.render``), not every step. Outside IPython nothing is
drawn (the callback only keeps the state).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .results import pictures
from .results.live import LiveState


class LiveFigure:
    """An ``optimize`` callback that draws the run in a notebook (see the module docs).

    Args:
        problem: the problem being optimized.
        every: seconds between redraws.
        views: how many views to show.
        width: the figure's width in inches.
    """

    def __init__(self, problem, *, every: float = 2.0, views: int = 3, width: float = 9.0):
        self.state = LiveState(problem, render_every=every, views=views)
        self.every = float(every)
        self.width = float(width)
        self.handle = None
        self.last_draw = -np.inf

    def __call__(self, info) -> None:
        self.state(info)
        now = time.perf_counter()
        if now - self.last_draw >= self.every or info.iteration == 0:
            self.draw()
            self.last_draw = time.perf_counter()

    def figure(self):
        """The figure of the current state (a ``matplotlib.figure.Figure``, not
        registered with pyplot, so a notebook shows it only where displayed)."""
        from matplotlib.figure import Figure

        snap = self.state.snapshot()
        ids = snap["views"]
        n = len(ids)
        fig = Figure(figsize=(self.width, 2.6 + 1.9 * 2), dpi=80)
        grid = fig.add_gridspec(3, max(n, 1), height_ratios=[1.3, 1, 1])
        ax = fig.add_subplot(grid[0, :])
        loss = np.array([np.nan if v is None else v for v in snap["loss"]], dtype=np.float64)
        if loss.size:
            ax.plot(np.arange(1, loss.size + 1), loss, lw=1.2)
            if np.nanmin(loss) > 0:
                ax.set_yscale("log")
        rate = snap["steps_per_second"]
        errors = ", ".join(f"{k if len(k) <= 30 else '…' + k[-29:]} {v:.3g}"
                           for k, v in list(snap["errors"].items())[:3])
        ax.set_title(f"{snap['name']}: {snap['status']}, {snap['steps']} steps"
                     + (f", {rate:.2f} steps/s" if rate else "") + (f"\nerrors: {errors}" if errors else ""),
                     fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.grid(alpha=0.3)
        with self.state.lock:
            photos = dict(self.state.photo_arrays)
            renders = dict(self.state.render_arrays)
            at = self.state.render_iteration
        for i, vid in enumerate(ids):
            for row, (image, label) in enumerate(((photos.get(vid), f"{vid}: photo"),
                                                  (renders.get(vid), f"after step {at + 1}"
                                                   if at is not None else "(no render yet)"))):
                a = fig.add_subplot(grid[1 + row, i])
                if image is not None:
                    a.imshow(pictures.srgb8(image), interpolation="nearest")
                a.set_title(label, fontsize=8)
                a.axis("off")
        fig.tight_layout()
        return fig

    def draw(self) -> None:
        """Draw (or redraw in place) the figure in the notebook."""
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        fig = self.figure()
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)

    def finish(self, result: Any = None) -> None:
        """Mark the run as over and draw the last state: with ``result``, its
        status, errors and final renders."""
        self.state.finish(getattr(result, "status", "finished"), result=result)
        self.draw()


def live(problem, *, every: float = 2.0, views: int = 3, width: float = 9.0) -> LiveFigure:
    """A callback for :func:`invpbr.optimize` that shows the run in a notebook
    figure updated in place (see :class:`LiveFigure`)."""
    return LiveFigure(problem, every=every, views=views, width=width)
