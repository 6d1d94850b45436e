"""Gauss-Newton polish of rigid motions (poses, cameras) after the steps.

A pose or camera a degree off moves the edges and textures of its views by a fraction
of a pixel. Adam steps on Monte Carlo gradients of such a motion are mostly noise
(BENCHMARKS.md, issue 13: at 48x48 and 8 samples one step's rotation gradient of a
pose carries about 7 degrees' worth of noise), so the steps end a degree or several
off wherever they stop. A motion has only six numbers, though, and what each does to
the images can be measured directly: render the views with the number moved by a
little (about half a pixel of image motion) and back, with the same random numbers
for both (the difference keeps the image's change and most of its noise cancels);
the differences are the columns of the Jacobian of the images. Levenberg-Marquardt
iterations then solve the linearized least-squares problem between the photos and
the renders:

- the residual (photo - render) is rendered with other random numbers than the
  Jacobian, so its noise is independent of the Jacobian's and the iteration's fixed
  point is the loss's minimum, not a point that noise pulls;
- a step is kept only where it lowers the loss of its views, before and after
  rendered with the same random numbers (each camera on its own view), and with more
  samples than the Jacobians' where those are few (``COMPARE_SAMPLES``: a render's
  variance is part of its loss, and a loss of noisy renders prefers the states that
  render quieter);
- pixels far off (fireflies of the photo or the render, what the model does not have)
  weigh less: the step minimizes the Huber loss (scale from the residuals' median
  absolute deviation) of the linearized residuals, reweighted on the linear model, so
  pixels the step itself would fix (a misaligned edge) keep their weight;
- a camera's first steps (at most ``BLURRED``) fit the residual images blurred by a
  pixel (``POLISH_BLUR``), the rest the sharp ones: sharp images are far from linear
  in a motion over half a pixel (a long edge crosses pixel borders), and along a
  valley (a camera's sideways move against the turn that nearly undoes it) the
  Jacobian's columns then did not add up and the steps went a tenth of the way; the
  blur takes detail away, though, so the polish ends sharp (a pose's are not
  blurred: its turn shows in the fine detail);
- but a pose polished sharp can settle in a shallow valley far from the photos'
  minimum, where the sharp images' linear model sees a minimum: one step on blurred
  images probes its end, and where it reaches far, a second polish (blurred first)
  runs from there and is kept where it renders closer to the photos
  (:func:`second_chance`); and the steps may have carried a pose out of the basin it
  started in, so each object's pose is polished from the run's start too (blurred by
  ``FROM_START_BLUR`` pixels first), that end kept where it renders closer
  (:func:`from_start`); neither replaces the first end from within its noise (one
  minimum reached twice, :func:`adopt_lower`);
- where a column's forward and backward differences differ in size by more than
  ``KINK`` times, the images have a kink there (a lamp turning edge-on to a view
  shows its bright face on one side and its dark back on the other) and the central
  difference, the mean of the two slopes, fits neither side: such a column is tried
  with each side's difference (and held), and the step whose linear model fits best
  among those that move the way their differences assumed is taken
  (:func:`one_sided`, :func:`huber_step`);
- the gradient uses the mean of the Jacobians (a camera's: those taken near its
  current position; less noise), and the normal matrix the product of the newest with
  the mean of the older of those, whose noises are independent (one noisy Jacobian's
  ``J^T J`` shortens every step);
- a camera's differences after its first Jacobian are taken along the principal axes
  of its newest normal matrix, so that a valley (a shift a turn undoes) is measured
  along itself, not as the small difference of two steep columns
  (:func:`principal_basis`);
- a step moves no component by more than ``TRUST`` finite-difference steps;
- the finite differences hold everything the images do: silhouettes, occlusion as
  camera rays slide over surfaces, shading, analytic shapes whose boundary terms
  Mitsuba 3.9 gets wrong; any integrator;
- for a light's pose, where a photo's clipped pixels are left out of the loss, so are
  the brightest pixels of a render of its own (samples no step uses), down to where
  the photos hardly clip: near the clip it leaves only the low draws of the photo's
  noise (:meth:`Renderer.leave_out_near_clip`); for other motions (an object's
  pose) the clipped channels count again, as censored observations of a likelihood
  that weighs the noise on both sides of the clip (:meth:`Renderer.censor_clipped`);
- it ends once every motion's last two steps were small (a quarter of the
  finite-difference step) or not kept, after at least ``MIN_ITERATIONS`` sharp ones,
  and returns the mean of the iterates of the last half of its sharp iterations (each
  iterate's noise is that of its own renders), of each motion those within its noise
  of its last iterate (a polish that approached from far has its approach there:
  :func:`settled_mean`).

It also says how well the photos determine each motion: the covariance of the
estimate, ``A^-1 B A^-1`` with ``A = J^T W J`` and ``B = J^T diag(w^2 r^2) J`` of the
plain (not blurred: their pixels' noise is independent) residuals and Jacobians, each
product taken between the Jacobians of two iterations (independent noise: their
product is not inflated by it, as ``J^T J`` of one noisy Jacobian is); a direction
whose ``A`` is not positive is not determined by the photos at all.

Cost per iteration: ``3 + 2 x 6`` renders of a pose's fitted views (of each view once
for all cameras together: each view shows only its own camera's change) at ``spp``
samples, without gradients; by default as many samples per view as 256 per pixel at
48x48 (``POLISH_SAMPLES``), so the cost does not grow with the views' pixels; on views
larger than that, the comparison's two renders at ``COMPARE_SAMPLES`` (4) times those
samples (before and after the step, where at 48x48 one render serves both) cost 7
renders more, about 1.5 times the iteration's.
"""

from __future__ import annotations

import itertools
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Image motion of a finite-difference step, in pixels.
FD_PIXELS = 0.5
#: Largest finite-difference step of a latent component (radians; sizes).
MAX_STEP = 0.05
#: A step moves no component by more than this many finite-difference steps (about a
#: pixel of image motion).
TRUST = 2.0
#: ``[[estimate]] polish_blur`` where a table does not set it, by kind: the Gaussian blur
#: (standard deviation, pixels) of the residual images the steps fit. An image at 48x48
#: is far from linear in a camera's motion over half a pixel (edges cross pixel
#: borders): the finite-difference columns of a sideways move and of the turn that
#: nearly undoes it did not add up to what the two did together (off by 60 % of the
#: change), and in such a valley the steps went a tenth of the way (see :func:`blurred`).
#: The blurred iterations come first, at most ``BLURRED`` of them (fewer where every
#: motion settles sooner), then the polish goes on with the sharp images: a blur also
#: takes away detail that pins a motion down (at 24x24, cameras blurred to the end
#: missed the goal 1.5 times as often as sharp ones; a pose's turn shows in fine
#: shading, texture and the silhouette of a round object, and blurred poses ended
#: twice as far off: BENCHMARKS.md).
POLISH_BLUR = {"pose": 0.0, "camera": 1.0}
BLURRED = 6
#: A pose polished from the run's start (:func:`from_start`) fits images blurred by this
#: many pixels first (at most ``BLURRED`` iterations, as a camera's), then sharp ones:
#: the start's offset can be a few pixels, where a periodic texture's neighbouring cells
#: match. Pose draw 800 of the benchmark (a checkered blob, 48x48, start 1.8 deg and
#: 1.8 % of the diagonal off): sharp from the start it ended 3.67 deg off, blurred by
#: 1 pixel 2.46 (a local minimum: along the rigid path to the truth the loss rises
#: 1.5 % before it falls 9 %), by 2 pixels 0.26 (BENCHMARKS.md).
FROM_START_BLUR = 2.0
#: A camera's Jacobians taken within this many finite-difference steps (every component)
#: of the current position are averaged (see :func:`nearby_jacobians`); a pose's all of
#: them, as measured before (its polish is limited by noise: with only the nearby ones,
#: 10 scenes of the pose benchmark ended worse in 8, median 1.44 deg against 1.20;
#: pose runs vary by up to 1.77x, so this is a caution, not a proof).
NEAR = 1.0
#: A Jacobian column whose forward and backward differences differ in size by more than
#: this factor is kinked (see :func:`one_sided`); of those, at most ``KINKED_TRIED`` (the
#: largest ratios) are tried on each side (3 ** KINKED_TRIED linear models per step).
KINK = 2.0
KINKED_TRIED = 3
#: Rounds of reweighting within one step's linear model (see :func:`linear_step`).
IRLS_ROUNDS = 8
#: Huber weights: residuals beyond this many robust standard deviations weigh less.
HUBER = 2.0
#: A step below this fraction of the finite-difference step in every component is small;
#: the polish ends once every motion's last two steps were small, kept or not (after at
#: least ``MIN_ITERATIONS``). Refused large steps used to end it too: 104 and 113 of the
#: pose benchmark stopped 4 of their standard deviations off (BENCHMARKS.md).
SETTLED = 0.25
MIN_ITERATIONS = 4
#: After a kept step that the trust region shortened (its linear model reached beyond
#: ``TRUST`` finite-difference steps), a motion that averages Jacobians from farther than
#: that (a pose averages all of them; a camera only those within ``NEAR``) settles only
#: after this many small steps (not two): the Jacobians it averages are then mostly of
#: where it was before, and their model can see a minimum near where it landed. Pose
#: draw 800 of the benchmark, polished from its start 1.8 degrees off: a kept step
#: trimmed from 4.7 to 2 took it to 5.0 degrees, two small steps (0.17, 0.14) ended the
#: polish at 4.4; the third step went back 3.2 degrees (with the rule: 0.78). Measured to
#: change none of 46 benchmark runs end to end (BENCHMARKS.md, "Poses framed on their
#: object by default; a pose's polish after a late jump").
JUMP_SETTLE = 3
#: A pose's first blurred step from the sharp polish's end that reaches this many
#: finite-difference steps (before the trust region trims it) starts its second chance
#: (see :func:`second_chance`). Measured: 0.03-0.48 on the 51 pose and lamp runs of the
#: benchmarks, 1.40 where the sharp polish had settled 15 degrees off (BENCHMARKS.md).
RESCUE_REACH = 1.0
#: Paired renders of each end a second chance compares.
COMPARE_SEEDS = 2
#: Where a photo's clipped pixels are left out of the loss (``[photos] clipped`` =
#: ``mask``), the brightest pixels of a render independent of the steps' are left out
#: too, down to where fewer than ``NEAR_CLIP_RATE`` of the photos' pixels are clipped
#: (counted in runs of ``NEAR_CLIP_RUN`` pixels, brightest first; see
#: :meth:`Renderer.leave_out_near_clip`); at least ``NEAR_CLIP_KEPT`` of a view's pixels stay.
#: Nothing is left out where fewer than ``NEAR_CLIP_SHARE`` of the fitted pixels are
#: clipped. Only for estimates that ask (:meth:`Estimate.leaves_out_near_clip
#: <invpbr.estimates.base.Estimate.leaves_out_near_clip>`: a light's pose).
NEAR_CLIP_RATE = 0.05
NEAR_CLIP_RUN = 200
NEAR_CLIP_KEPT = 0.25
NEAR_CLIP_SHARE = 0.01
#: Unclipped channels near the clip needed to measure the photos' noise there (see
#: :meth:`Renderer.censor_clipped`); with fewer the clipped channels stay left out, as
#: where fewer than ``CENSOR_SHARE`` of the fitted pixels clip: a few clipped pixels in
#: a highlight are as likely the photo's outliers (a Monte Carlo firefly, a glint) as
#: the scene at the clip, and counted they pulled pose 110 of the benchmark from 0.37
#: to 1.15 degrees (12 channels of 34560 clipped).
CENSOR_MIN = 50
CENSOR_SHARE = 0.01
#: Seeds of the polish's renders start here (away from the steps' and the final renders').
SEED_BASE = 1 << 29
#: The polish returns the mean of the iterates of its last half that lie within this
#: level of the chi-square of their noise from its last one (see :func:`settled_mean`).
TAIL_LEVEL = 0.999
#: Channels per pixel in the residual vectors (see :func:`uncertainty`).
PIXEL = 3
#: Two ends of a pose's polishes beyond each other's noise (see :func:`apart`) are two
#: minima (result.json ``apart.two_minima``; the run warns) where their losses differ by
#: less than this many standard deviations of the photos' noise
#: (:func:`photo_noise_of_difference`): the photos could as well have preferred the
#: other. Farther ends whose loss is clearly higher are an end that did not get there
#: (pose draws 801 and 803: polished from the start for 20 iterations, 37 and 3.1 deg
#: from the first end, losses 91 % and 42 % higher), not a second minimum.
TWO_MINIMA = 2.0
#: ``[[estimate]] polish`` (iterations) where a table does not set it, by kind.
POLISH = {"pose": 20, "camera": 20}
#: ``[[estimate]] polish_spp`` where a table does not set it: as many samples per view as
#: 256 per pixel at 48x48 (where the pose and camera benchmarks measured the polish), so
#: at most ``POLISH_SPP`` and, for larger images, fewer per pixel (at least
#: ``POLISH_SPP_MIN``). At a fixed 256 the polish's cost grew with the pixels: 1.6 s per
#: render of a 256x256 view on 2 cores, 14 renders per view per iteration, 20 iterations
#: (22 minutes for 3 such views; pose runs at 96x96 spent 1100-1160 s in the polish).
POLISH_SPP = 256
POLISH_SAMPLES = 256 * 48 * 48
POLISH_SPP_MIN = 16
#: The renders that compare a step's loss before and after (and a pose's ends: see
#: :func:`compare_loss`) take this many times the polish's samples, up to ``POLISH_SPP``
#: (never fewer than the polish's): one render's loss holds that render's variance, which
#: depends on the state, so a loss of noisy renders prefers the states that render
#: quieter. At 96x96 (64 samples per pixel) it was 40 % of pose 113's loss there, and
#: its end, 1.49 deg off, looked lower than the truth at 64 samples (387.61 against
#: 388.34, x1e-6) and higher at 512 (208.91 against 208.42; BENCHMARKS.md). At 48x48 and
#: smaller the polish already renders ``POLISH_SPP``: nothing changes there.
COMPARE_SAMPLES = 4


@dataclass
class Block:
    """One rigid motion: ``size`` components of latent ``name`` from ``start``, the
    fitted views (numbers into ``problem.views``) it changes, its finite-difference
    steps, and the label the report gives it (a camera's sensor id, or ``pose``)."""

    name: str
    start: int
    size: int
    views: list[int]
    steps: np.ndarray
    label: str
    unit: float  # scene units of one latent translation unit
    blur: float = 0.0  # of the residual images the steps fit now (pixels; see POLISH_BLUR)
    near: float = NEAR  # Jacobians this near (finite-difference steps) are averaged
    principal: bool = False  # Jacobians along the normal matrix's axes (see principal_basis)
    lam: float = 1e-3
    threshold: float | None = None  # the first iteration's Huber threshold (the report's)
    loss_before: float | None = None
    loss_after: float | None = None
    moved: int = 0
    kinked: int = 0  # iterations whose newest Jacobian had a kinked column (see one_sided)
    settled: int = 0  # iterations in a row whose step was small (kept or not)
    jumps: int = 0  # kept steps the trust region shortened, where JUMP_SETTLE applies
    reach: float = 0.0  # the last step's largest component in finite-difference steps, untrimmed
    jacobians: list = field(default_factory=list)  # the last two
    # (position, Jacobian, its one_sided() differences or None) of every iteration
    history: list = field(default_factory=list)
    residual: Any = None
    weights: Any = None


def polish_iterations(estimate) -> int:
    """``[[estimate]] polish`` of ``estimate``, or its kind's default (0: none)."""
    value = getattr(getattr(estimate, "config", None), "polish", None)
    return POLISH.get(estimate.kind, 0) if value is None else int(value)


def polish_spp(estimate, pixels: float | None = None) -> int:
    """``[[estimate]] polish_spp`` of ``estimate``, or the default for views of ``pixels``
    pixels on average (see ``POLISH_SAMPLES``; None: ``POLISH_SPP``)."""
    value = getattr(getattr(estimate, "config", None), "polish_spp", None)
    if value is not None:
        return int(value)
    if not pixels:
        return POLISH_SPP
    return int(np.clip(round(POLISH_SAMPLES / pixels), POLISH_SPP_MIN, POLISH_SPP))


def polish_blur(estimate) -> float:
    value = getattr(getattr(estimate, "config", None), "polish_blur", None)
    return POLISH_BLUR.get(estimate.kind, 0.0) if value is None else float(value)


def pixel_angle(scene, sensor_index: int) -> float:
    """The angle one pixel spans at the image centre of a perspective sensor
    (radians; a 40-degree field of view where the sensor has none)."""
    import mitsuba as mi

    sensor = scene.sensors()[sensor_index]
    width = int(sensor.film().crop_size()[0])
    params = mi.traverse(sensor)
    fov = float(np.ravel(np.array(params["x_fov"]))[0]) if "x_fov" in params else 40.0
    return float(np.radians(fov)) / max(width, 1)


def camera_centre(scene, sensor_index: int) -> np.ndarray:
    m = scene.sensors()[sensor_index].world_transform().matrix
    return np.array(m, dtype=np.float64).reshape(4, 4)[:3, 3]


def blocks_of(run) -> list[list[Block]]:
    """The rigid motions of ``run``'s estimates that are polished, in groups moved at
    once (all cameras: each view shows only its own; each pose alone)."""
    problem, scene, fit = run.problem, run.problem.scene, run.context.fit
    if any(hasattr(e, "make_strategy") for e in run.estimates):
        return []  # (a radiance field renders its own rays, not the Mitsuba scene: not polished)
    by_sensor = {problem.views[v].index: v for v in fit}
    groups: list[list[Block]] = []
    for e in run.estimates:
        if e.kind not in POLISH or polish_iterations(e) <= 0:
            continue
        model = e.model
        if e.kind == "camera":
            bbox = scene.bbox()
            centre = 0.5 * (np.array(bbox.min, np.float64) + np.array(bbox.max, np.float64))
            group = []
            for j, (sid, index) in enumerate(zip(model.ids, model.indices)):
                h = FD_PIXELS * pixel_angle(scene, index)
                d = float(np.linalg.norm(model.c2w[j][:3, 3] - centre))
                steps = np.minimum([h * d / model.size] * 3 + [h] * 3, MAX_STEP)
                group.append(Block(e.key, 6 * j, 6, [by_sensor[index]], steps, sid, model.size,
                                   blur=polish_blur(e), principal=True))
            groups.append(group)
        else:
            views = list(fit)
            h = min(FD_PIXELS * pixel_angle(scene, problem.views[v].index)
                    * float(np.linalg.norm(camera_centre(scene, problem.views[v].index)
                                           - model.centre)) / model.size for v in views)
            groups.append([Block(e.key, 0, model.latent_size, views,
                                 np.full(model.latent_size, min(h, MAX_STEP)), "pose",
                                 model.size, blur=polish_blur(e), near=np.inf)])
    return groups


class Renderer:
    """Residuals (photo - render) of fitted views for given latents, no gradients."""

    spp = POLISH_SPP

    def __init__(self, run, spp: int):
        views = run.problem.views
        self.run = run
        self.spp = spp
        self.per_view = any(e.per_view for e in run.estimates)
        self.photos = {v: views[v].photo[..., :3].astype(np.float64) for v in run.context.fit}
        bound = run.problem.clipped_bounds()
        pixels = {v: views[v].loss_pixels(bound) for v in run.context.fit}
        self.masks = {v: None if m is None else m.astype(bool) for v, (m, _) in pixels.items()}
        self.ceilings = {v: c for v, (_, c) in pixels.items()}  # (see View.loss_pixels)
        self.censored: dict[int, np.ndarray] = {}  # (see censor_clipped)
        self.sigma = 0.0

    def set(self, values: dict[str, np.ndarray]) -> None:
        import mitsuba as mi

        for name, value in values.items():
            self.run.latents[name] = mi.Float(np.asarray(value, np.float32).ravel())

    def renders(self, values: dict[str, np.ndarray], views: list[int], seed: int,
                spp: int | None = None) -> dict:
        """view number -> render (H, W, 3) of ``views`` at the latents ``values``
        (samples ``seed``; ``spp`` per pixel, None: the polish's), as the loss sees it
        (gains applied)."""
        import drjit as dr
        import mitsuba as mi

        run = self.run
        self.set(values)
        out = {}
        with dr.suspend_grad():
            if not self.per_view:
                run.latents.write_scene()
            for v in views:
                if self.per_view:
                    run.latents.write_scene(run.problem.views[v].index)
                s = dr.opaque(mi.UInt32, (seed * 7919 + v) % (2**31))
                image = run.context.render_view(v, spp or self.spp, s)
                image = run.latents.apply_to_image(image, v)
                out[v] = np.array(image, dtype=np.float64)[..., :3]
        return out

    @property
    def compare_spp(self) -> int:
        """The samples per pixel of the renders that compare losses (see
        ``COMPARE_SAMPLES``)."""
        return max(self.spp, min(COMPARE_SAMPLES * self.spp, POLISH_SPP))

    def compared(self, values: dict[str, np.ndarray], views: list[int], seed: int) -> dict:
        """:meth:`residuals` at ``compare_spp`` samples per pixel."""
        if self.compare_spp > self.spp:
            return self.residuals(values, views, seed, self.compare_spp)
        return self.residuals(values, views, seed)

    def residuals(self, values: dict[str, np.ndarray], views: list[int], seed: int,
                  spp: int | None = None) -> dict:
        """view number -> photo - render (H, W, 3) for ``views`` at the latents
        ``values``: a clipped channel's against the render up to its ceiling, or the
        censored residual (:meth:`censor_clipped`)."""
        out = {}
        images = self.renders(values, views, seed, *([spp] if spp else []))
        for v, image in images.items():
            if self.ceilings[v] is not None:
                image = np.minimum(image, self.ceilings[v])
            out[v] = self.photos[v] - image
            if v in self.censored:
                out[v] = np.where(self.censored[v], censored_residual(out[v], self.sigma), out[v])
        return out

    def clipped_left_out(self) -> list[int]:
        """The fitted views whose photos' clipped pixels the loss leaves out (their
        mask lacks them; no ceiling bounds them)."""
        views = self.run.problem.views
        return [v for v in self.masks if self.ceilings[v] is None
                and views[v].clipped is not None and self.masks[v] is not None]

    def censor_clipped(self, theta: dict, seed: int) -> dict[str, Any] | None:
        """Count the photos' clipped channels, where the loss leaves them out, as
        censored observations: the photo says only that the scene plus its noise reached
        the clip there. Each such channel's residual becomes that of the censored
        likelihood (:func:`censored_residual`), whose noise scale is that likelihood's
        own (:func:`censored_noise`) over the channels that a render at ``theta``
        (samples ``seed``, used by no step) shows between half the clip and one and a
        half times it, clipped or not. None where
        no view has clipped channels left out, else (that scale, the fraction of the
        fitted pixels now counted); (None, 0) where they stay left out (fewer than
        ``CENSOR_SHARE`` of the pixels clip, or under ``CENSOR_MIN`` channels near the
        clip to measure the noise).

        Why: left out, the clipped channels take with them the pixels whose noise
        reached the clip, so the kept ones near it are the low draws of the noise,
        darker than the scene (see :meth:`leave_out_near_clip`), and an object's
        silhouette against a clipped floor loses its outer side. Counted as plain lower
        bounds (``[photos] clipped = "bound"``), a channel whose scene lies just below
        the clip but whose noise crossed it is pulled up to the clip; the censored
        likelihood weighs both sides by the noise."""
        views = self.run.problem.views
        todo = self.clipped_left_out()
        if not todo:
            return None
        clipped = sum(int(views[v].clipped.any(axis=-1).sum()) for v in todo)
        if clipped < CENSOR_SHARE * (sum(int(self.masks[v].sum()) for v in todo) + clipped):
            return {"sigma": None, "pixels_counted": 0.0}
        residuals = self.residuals(theta, todo, seed)
        band, plain, censored = [], [], []
        for v in todo:  # (the mask holds no pixel with a clipped channel)
            level = float(np.median(self.photos[v][views[v].clipped]))
            render = self.photos[v] - residuals[v]
            near = self.masks[v][..., None] & (render >= 0.5 * level) & (render < level)
            band.append(residuals[v][near])
            around = (render >= 0.5 * level) & (render < 1.5 * level)
            plain.append(residuals[v][self.masks[v][..., None] & around])
            censored.append(residuals[v][views[v].clipped_channels() & around])
        r = np.concatenate(band)
        if r.size < CENSOR_MIN:
            return {"sigma": None, "pixels_counted": 0.0}
        spread = 1.4826 * float(np.median(np.abs(r - np.median(r)))) + 1e-8
        self.sigma = censored_noise(np.concatenate(plain), np.concatenate(censored), spread)
        before = sum(int(self.masks[v].sum()) for v in todo)
        for v in todo:
            self.censored[v] = views[v].clipped_channels()
            self.masks[v] = self.masks[v] | views[v].clipped.any(axis=-1)
        after = sum(int(self.masks[v].sum()) for v in todo)
        pixels = sum(self.photos[v].shape[0] * self.photos[v].shape[1] for v in self.masks)
        return {"sigma": self.sigma, "pixels_counted": (after - before) / pixels}

    def leave_out_near_clip(self, theta: dict, seed: int) -> dict[str, Any] | None:
        """Leave out of the fitted views whose clipped pixels are left out of the loss
        the pixels near the clip, chosen by a render at ``theta`` (samples ``seed``,
        used by no step): of the pixels the views fit or clipped, brightest first (a
        pixel's brightest channel in that render), the runs of ``NEAR_CLIP_RUN`` of
        which at least ``NEAR_CLIP_RATE`` are clipped in the photos, down to the first
        run with fewer. None where no view has clipped pixels left out, else (the
        render's value from which pixels were left out, or None; the fraction of the
        fitted pixels left out).

        Why: a photo's channel is clipped where the scene plus the photo's noise reach
        the clip, so the pixels the clip leaves in a bright noisy region are those whose
        noise stayed below it, darker than the scene on average; the polish then turned
        a lamp or an object toward making them darker. Measured (light draws 401 and
        404 at 48x48, PNG photos at 128 spp, the photos' noise drawn 7 times): the ends
        lay 0.74 and 1.10 degrees off the truth on average, each draw the same way,
        where the same scene's linear EXR photos (not clipped) and 2048-spp photos
        ended 0.29 degrees off (BENCHMARKS.md, issue 13). Which pixels are near the
        clip is decided by an independent render, not by the photo: choosing them by
        the photo's value would keep only the low draws of its noise again. How far
        down is read off the photos' own clipping: where their noise is small little
        is left out, and nothing where fewer than ``NEAR_CLIP_SHARE`` of the pixels
        clip (light draw 402, 0.5 % clipped: leaving out its brightest 2.4 %, the
        lamp's strongest signal, took it from 1.44 to 2.10 degrees, worse than its
        start)."""
        views = self.run.problem.views
        todo = self.clipped_left_out()
        if not todo:
            return None
        residuals = self.residuals(theta, todo, seed)
        fitted = {v: self.masks[v] | views[v].clipped.any(axis=-1) for v in todo}
        bright = {v: (self.photos[v] - residuals[v]).max(axis=-1) for v in todo}
        values = np.concatenate([bright[v][fitted[v]] for v in todo])
        clipped = np.concatenate([views[v].clipped.any(axis=-1)[fitted[v]] for v in todo])
        order = np.argsort(-values, kind="stable")
        values, clipped, threshold = values[order], clipped[order], None
        for start in range(0, values.size if clipped.mean() >= NEAR_CLIP_SHARE else 0,
                           NEAR_CLIP_RUN):
            part = clipped[start:start + NEAR_CLIP_RUN]
            if part.size < NEAR_CLIP_RUN // 2 or part.mean() < NEAR_CLIP_RATE:
                break
            threshold = float(values[start:start + NEAR_CLIP_RUN].min())
        if threshold is None:
            return {"threshold": None, "pixels_left_out": 0.0}
        before = sum(int(self.masks[v].sum()) for v in todo)
        for v in todo:
            kept = self.masks[v] & (bright[v] < threshold)
            if kept.sum() >= NEAR_CLIP_KEPT * self.masks[v].sum():
                self.masks[v] = kept
        after = sum(int(self.masks[v].sum()) for v in todo)
        pixels = sum(self.photos[v].shape[0] * self.photos[v].shape[1] for v in self.masks)
        return {"threshold": threshold, "pixels_left_out": (before - after) / pixels}

    def flat(self, residuals: dict, views: list[int], blur: float = 0.0) -> np.ndarray:
        """The residuals of ``views`` (each blurred by ``blur`` pixels) as one vector of
        their masked pixels."""
        parts = []
        for v in views:
            r, m = blurred(residuals[v], self.masks[v], blur), self.masks[v]
            parts.append((r[m] if m is not None else r.reshape(-1, PIXEL)).ravel())
        return np.concatenate(parts)


def censored_noise(plain: np.ndarray, censored: np.ndarray, guess: float) -> float:
    """The photos' noise scale near the clip: the maximum-likelihood ``sigma`` of
    Gaussian noise about the render, from the residuals ``plain`` (photo - render) of
    the unclipped channels and ``censored`` (clip - render) of the clipped ones whose
    render lies near the clip (the censored likelihood of :func:`censored_residual`,
    its scale the unknown), searched within ``e^3`` of ``guess``.

    Why not the spread of the unclipped channels alone: near the clip they are those
    whose noise stayed below it (the ones it pushed up are clipped), so their spread
    is cut on one side. Measured on the pose benchmark's new draw 702 (48x48, 8-bit
    photos at 128 spp, a bright blob 20-31 % clipped): their robust spread 0.083, this
    0.115; the pose ended 0.95 deg off (5 of its standard deviations) with the first,
    0.36 with this (BENCHMARKS.md, "New draws 700-705, and the clip's noise scale")."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_ndtr

    def minus_log_likelihood(log_sigma: float) -> float:
        s = np.exp(log_sigma)
        return (plain.size * log_sigma + float(np.sum(plain * plain)) / (2.0 * s * s)
                - float(np.sum(log_ndtr(-censored / s))))

    found = minimize_scalar(minus_log_likelihood, method="bounded",
                            bounds=(np.log(guess) - 3.0, np.log(guess) + 3.0))
    return float(np.exp(found.x))


def censored_residual(r: np.ndarray, sigma: float) -> np.ndarray:
    """The residual of a censored channel whose plain residual (clip - render) is
    ``r``, for photo noise of scale ``sigma``: ``sigma * sqrt(-2 log P(render + noise
    >= clip))``, so that half its square is the channel's negative log-likelihood
    (times ``sigma^2``, zero where the render is far above the clip) and the least
    squares of the polish maximize the censored (Tobit) likelihood. Far below the clip
    it is about ``r``, as a lower bound's; above it, it fades to zero."""
    from scipy.special import log_ndtr

    return sigma * np.sqrt(np.maximum(-2.0 * log_ndtr(-r / sigma), 0.0))


def blurred(image: np.ndarray, mask: np.ndarray | None, sigma: float) -> np.ndarray:
    """``image`` (H, W, 3) blurred by a Gaussian of ``sigma`` pixels, from the pixels
    of ``mask`` alone (normalized convolution) where there is one. Blurred, an image
    changes smoothly as edges cross pixel borders, so the Jacobian of finite differences
    half a pixel wide predicts moves of a pixel or two: camera seed 118 of the benchmark
    at 48x48, two cameras 0.5-0.9 degrees off after 20 iterations without, both within
    0.3 degrees after 6 with a pixel's blur."""
    if sigma <= 0:
        return image
    from scipy.ndimage import gaussian_filter

    if mask is None:
        return gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")
    m = mask.astype(np.float64)[..., None]
    total = gaussian_filter(image * m, sigma=(sigma, sigma, 0), mode="constant")
    weight = gaussian_filter(m, sigma=(sigma, sigma, 0), mode="constant")
    return total / np.maximum(weight, 1e-6)


def huber_weights(r: np.ndarray) -> tuple[np.ndarray, float]:
    """IRLS weights of residuals ``r`` and the Huber threshold."""
    sigma = 1.4826 * float(np.median(np.abs(r - np.median(r)))) + 1e-8
    c = HUBER * sigma
    return huber_weight(r, c), c


def huber_weight(r: np.ndarray, c: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= c, 1.0, c / np.maximum(a, 1e-30))


def huber_loss(r: np.ndarray, c: float) -> float:
    a = np.abs(r)
    return float(np.sum(np.where(a <= c, 0.5 * a * a, c * (a - 0.5 * c))))


def principal_basis(b: Block) -> np.ndarray:
    """The directions (columns, in latent units, each one finite-difference step long)
    along which block ``b``'s next Jacobian is taken: for a block that asks
    (``b.principal``: a camera's) the principal axes of its newest Jacobian's normal
    matrix in step units, else, and where that Jacobian had kinked columns (see
    :func:`one_sided`, whose rule works on the latent's own axes), those axes.

    Why: a camera far from the scene has valleys, a sideways shift that a turn nearly
    undoes, along which the image changes little while along each axis it changes a
    lot. Built from central differences along the axes, the Gauss-Newton model saw
    such a valley 25 times steeper than the loss is (measured; the likely cause: each
    difference's error, of the order of its step cubed as an edge's coverage is not
    linear over half a pixel, differs from axis to axis and does not cancel in the
    valley's combination), and the polish stopped where its own
    loss still fell toward the truth (camera draw 503, cam00: 0.73 degrees and 1.0 %
    of the diagonal off, worse than its start in position; the polish's loss 9 % lower
    at the truth, BENCHMARKS.md). Differences taken along the valley itself move no
    edge across its steep direction."""
    axes = np.diag(b.steps)
    if not b.principal or not b.history or b.history[-1][2] is not None or b.weights is None:
        return axes
    jac = b.history[-1][1] * b.steps[None, :]
    a = jac.T @ (jac * b.weights[:, None])
    if not np.all(np.isfinite(a)):
        return axes
    return b.steps[:, None] * np.linalg.eigh(a)[1]


def _jacobians(renderer: Renderer, theta: dict, group: list[Block], views: list[int],
               seed: int) -> None:
    """Each block's Jacobian of its views' residuals (central differences along the
    directions of :func:`principal_basis`, common random numbers, returned to the
    latent's axes): of the blurred residuals (the steps') appended to
    ``block.history`` with its one-sided differences where they disagree (see
    :func:`one_sided`; along the latent's axes only), of the plain ones (the
    uncertainty's) kept as its newest in ``block.jacobians``."""
    zero = renderer.residuals(theta, views, seed)  # (the one-sided differences' middle)
    bases = [principal_basis(b) for b in group]
    columns = []
    for k in range(group[0].size):
        plus = {n: t.copy() for n, t in theta.items()}
        minus = {n: t.copy() for n, t in theta.items()}
        for b, basis in zip(group, bases):
            plus[b.name][b.start:b.start + b.size] += basis[:, k]
            minus[b.name][b.start:b.start + b.size] -= basis[:, k]
        columns.append((renderer.residuals(plus, views, seed),
                        renderer.residuals(minus, views, seed)))
    for b, basis in zip(group, bases):
        # (residual = photo - render: its derivative is minus the render's)
        back = np.linalg.inv(basis)  # (derivatives along the basis -> along the axes)

        def jacobian(blur):
            return np.stack([(renderer.flat(rp, b.views, blur) - renderer.flat(rm, b.views, blur))
                             / 2.0 for rp, rm in columns], axis=1) @ back

        def sides(blur):
            if not np.array_equal(basis, np.diag(b.steps)):
                return None
            middle = renderer.flat(zero, b.views, blur)
            forward = np.stack([(renderer.flat(rp, b.views, blur) - middle) / b.steps[k]
                                for k, (rp, _) in enumerate(columns)], axis=1)
            backward = np.stack([(middle - renderer.flat(rm, b.views, blur)) / b.steps[k]
                                 for k, (_, rm) in enumerate(columns)], axis=1)
            return one_sided(forward, backward)

        sharp = jacobian(0.0)
        b.jacobians = (b.jacobians + [sharp])[-2:]
        b.history.append((theta[b.name][b.start:b.start + b.size].copy(),
                          jacobian(b.blur) if b.blur > 0 else sharp, sides(b.blur)))


def one_sided(forward: np.ndarray, backward: np.ndarray):
    """``(forward, backward, ratio)`` (each column's larger size over its smaller) where
    some column's forward and backward
    differences differ in size by more than ``KINK`` times (the images change at a kink
    of the motion: a rectangle lamp turning edge-on to a view shows its bright face on
    one side and its dark back on the other), else None. Such a column's central
    difference is the mean of the two slopes and fits neither side: at the end of lamp
    seed 102's polish it predicted 5 times the image change that the 1.4 degrees to the
    truth made, and the steps stopped short (BENCHMARKS.md)."""
    f, b = np.linalg.norm(forward, axis=0), np.linalg.norm(backward, axis=0)
    ratio = np.maximum(f, b) / np.maximum(np.minimum(f, b), 1e-30)
    return (forward, backward, ratio) if np.any(ratio > KINK) else None


def oriented(entry: tuple, signs: np.ndarray) -> np.ndarray:
    """A history entry's Jacobian for a move of the signs ``signs`` (+1, -1; 0: any):
    its kinked columns the one-sided difference on that side, the rest central."""
    _, central, sides = entry
    if sides is None or not np.any(signs):
        return central
    forward, backward, ratio = sides
    jac = central.copy()
    for k in np.flatnonzero((ratio > KINK) & (signs != 0)):
        jac[:, k] = forward[:, k] if signs[k] > 0 else backward[:, k]
    return jac


def nearby_jacobians(b: Block, signs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The mean of the Jacobians of block ``b`` taken within ``b.near`` finite-difference
    steps of its newest position, and the mean of those besides the newest (None where
    there are none), each oriented for a move of ``signs`` (see :func:`oriented`).
    Averaging lowers their noise; Jacobians from farther away have their edges where
    the images had them then, and would blur the newest one's (a camera that went 3
    degrees off and back took 30 iterations to return with the mean of all)."""
    signs = np.zeros(b.size) if signs is None else signs
    here = b.history[-1][0]
    newest = oriented(b.history[-1], signs)
    near = [oriented(entry, signs) for entry in b.history[:-1]
            if np.max(np.abs(entry[0] - here) / b.steps) <= b.near]
    older = np.mean(near, axis=0) if near else None
    mean = newest if older is None else (older * len(near) + newest) / (len(near) + 1)
    return mean, older


def cross_product(j0: np.ndarray, j1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``J^T diag(w) J`` from two Jacobians with independent noise (symmetrized):
    not inflated by their noise, as one Jacobian's product with itself is."""
    return 0.5 * (j0.T @ (j1 * w[:, None]) + j1.T @ (j0 * w[:, None]))


def normal_matrix(older, newest: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``J^T W J`` of the Gauss-Newton step, from the cross product of the newest
    Jacobian and the mean of the older ones where it is positive definite. (One noisy
    Jacobian's ``J^T W J`` carries its noise's variance on the diagonal, which shortens
    every step by the ratio of signal to signal plus noise: at 48x48 the steps of a pose
    went a fifth of the way. Jacobians with independent noise do not.)"""
    if older is not None:
        a = cross_product(older, newest, w)
        if np.all(np.isfinite(a)) and np.linalg.eigvalsh(a).min() > 0:
            return a
    return newest.T @ (newest * w[:, None])


def huber_step(b: Block, r: np.ndarray, c: float) -> np.ndarray:
    """The damped Gauss-Newton step of block ``b`` that minimizes the Huber loss
    (threshold ``c``) of the linearized residuals ``r - J step`` (see
    :func:`linear_step`). Where the newest Jacobian has kinked columns (see
    :func:`one_sided`), each of them is tried moving up, moving down (its one-sided
    difference on that side) and held, and the step whose linear model fits best among
    those that move as their columns assumed is taken (at most ``KINKED_TRIED`` kinked
    columns, those of the largest ratio)."""
    sides = b.history[-1][2]
    if sides is None:
        return linear_step(b, r, c, np.zeros(b.size))[0]
    ratio = sides[2]
    tried = [k for k in np.argsort(-ratio) if ratio[k] > KINK][:KINKED_TRIED]
    best, best_loss = np.zeros(b.size), np.inf
    for choice in itertools.product((1, -1, 0), repeat=len(tried)):
        signs = np.zeros(b.size)
        signs[tried] = choice
        held = np.zeros(b.size, bool)
        held[tried] = np.array(choice) == 0
        delta, jac = linear_step(b, r, c, signs, held)
        move = -delta  # (the step is subtracted: see _iterate)
        if np.any(move[tried] * signs[tried] < 0):
            continue  # (it moves a kinked column the other way than its difference assumed)
        loss = huber_loss(r - jac @ delta, c)
        if loss < best_loss:
            best, best_loss = delta, loss
    return best


def linear_step(b: Block, r: np.ndarray, c: float, signs: np.ndarray,
                held: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The damped Gauss-Newton step of block ``b`` that minimizes the Huber loss
    (threshold ``c``) of the linearized residuals ``r - J step``, ``J`` oriented for
    ``signs`` and the components ``held`` kept still: reweighted least squares on the
    linear model, a few rounds; (step, the mean ``J``). (Weights of ``r`` itself would
    count the pixels that a misaligned edge or texture leaves off, the very pixels the
    step should move, as outliers: a camera two pixels off stalled at 1.9 degrees with
    them, where the loss at its truth was 40 % lower.)"""
    jac, older = nearby_jacobians(b, signs)  # (the mean: less noise in the gradient)
    newest = oriented(b.history[-1], signs)
    free = np.ones(b.size, bool) if held is None else ~held
    if not free.any():  # (every component held: a motion of at most KINKED_TRIED numbers)
        return np.zeros(b.size), jac
    jf = jac[:, free]
    of, nf = (None if older is None else older[:, free]), newest[:, free]
    w = huber_weight(r, c)
    delta = np.zeros(b.size)
    for _ in range(IRLS_ROUNDS):
        a = normal_matrix(of, nf, w)
        damped = a + b.lam * np.diag(np.maximum(np.diag(a), 1e-12))
        try:
            delta[free] = np.linalg.solve(damped, jf.T @ (w * r))
        except np.linalg.LinAlgError:
            return np.zeros(b.size), jac
        reweighted = huber_weight(r - jac @ delta, c)
        if np.max(np.abs(reweighted - w)) < 1e-3:
            break
        w = reweighted
    return delta, jac


def within_trust(delta: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """``delta`` shortened (same direction) so that no component exceeds ``TRUST``
    finite-difference steps: along a flat valley of the loss (a camera's rotation
    against its sideways motion, a round object's turn) noise would send a full
    Gauss-Newton step degrees away (seen: 0.75 to 3 degrees in one step)."""
    reach = float(np.max(np.abs(delta) / steps))
    return delta * (TRUST / reach) if reach > TRUST else delta


def _iterate(renderer: Renderer, theta: dict, group: list[Block], seeds: tuple[int, int]) -> None:
    """One Levenberg-Marquardt iteration of ``group`` (updates ``theta`` in place)."""
    views = sorted({v for b in group for v in b.views})
    base = renderer.residuals(theta, views, seeds[0])
    _jacobians(renderer, theta, group, views, seeds[1])
    trial = {n: t.copy() for n, t in theta.items()}
    residuals = []
    for b in group:
        b.residual = renderer.flat(base, b.views)  # (sharp: the uncertainty's, the report's)
        b.weights, sharp_c = huber_weights(b.residual)
        r, c = b.residual, sharp_c  # (the steps' too, unless blurred)
        if b.blur > 0:
            r = renderer.flat(base, b.views, b.blur)
            c = huber_weights(r)[1]
        residuals.append((r, c))
        delta = huber_step(b, r, c)
        b.kinked += b.history[-1][2] is not None
        b.reach = float(np.max(np.abs(delta) / b.steps))
        delta = within_trust(delta, b.steps)
        trial[b.name][b.start:b.start + b.size] -= delta
        if b.threshold is None:
            b.threshold = sharp_c
            b.loss_before = huber_loss(b.residual, sharp_c) / r.size
        b.loss_after = huber_loss(b.residual, b.threshold) / r.size  # (the newest base render's)
    # (the comparison: at the residual's samples, its render reused, or at more; the
    # same random numbers before and after either way: see COMPARE_SAMPLES)
    more = renderer.compare_spp > renderer.spp
    before = renderer.compared(theta, views, seeds[0]) if more else None
    after = renderer.compared(trial, views, seeds[0])
    for b, (r, c) in zip(group, residuals):
        before_loss = huber_loss(renderer.flat(before, b.views, b.blur) if more else r, c)
        after_loss = huber_loss(renderer.flat(after, b.views, b.blur), c)
        step = trial[b.name][b.start:b.start + b.size] - theta[b.name][b.start:b.start + b.size]
        kept = after_loss < before_loss
        if kept:
            theta[b.name][b.start:b.start + b.size] += step
            b.lam = max(b.lam / 4.0, 1e-6)
            b.moved += 1
        else:
            b.lam = min(b.lam * 8.0, 1e6)
        # (a refused step settles only when it was small too: a large one refused on a
        # noisy loss comparison raises the damping, and the next, shorter step is tried)
        small = bool(np.all(np.abs(step) < SETTLED * b.steps))
        b.settled = b.settled + 1 if small else 0
        if kept and b.reach > TRUST and b.near > TRUST:  # (a jump: see JUMP_SETTLE)
            b.settled = 2 - JUMP_SETTLE
            b.jumps += 1


def sharpen(group: list[Block], iteration: int) -> bool:
    """End the blurred iterations of ``group`` (see ``POLISH_BLUR``) once there have
    been ``BLURRED`` of them or every motion's last two steps were small: its blocks go
    on with the sharp images, and the blurred Jacobians leave their average. True where
    the group is sharp (now or already)."""
    blurred_now = [b for b in group if b.blur > 0]
    if blurred_now and (iteration >= BLURRED or all(b.settled >= 2 for b in group)):
        for b in blurred_now:
            b.blur, b.history, b.settled, b.lam = 0.0, [], 0, Block.lam
        return True
    return not blurred_now


def covariance(b: Block) -> np.ndarray | None:
    """The covariance of block ``b``'s estimate (latent units) from its last two
    Jacobians, or None where the photos do not determine the motion (see the module
    and :func:`uncertainty`)."""
    if len(b.jacobians) < 2 or b.residual is None:
        return None
    j0, j1 = b.jacobians
    w, r = b.weights, b.residual
    a = cross_product(j0, j1, w)
    if r.size % PIXEL:
        raise ValueError(f"covariance(): {r.size} residuals are not whole pixels of {PIXEL} channels")
    # (the spread's matrix from the mean Jacobian, never from the cross product of the
    # two: that is not positive where the photos see a direction not at all, and such
    # a direction got a small standard deviation instead of a huge one or none)
    g = (0.5 * (j0 + j1) * (w * r)[:, None]).reshape(-1, PIXEL, j0.shape[1]).sum(axis=1)
    m = g.T @ g
    if not np.all(np.isfinite(a)) or np.linalg.eigvalsh(a).min() <= 0:
        return None
    inv = np.linalg.inv(a)
    return inv @ m @ inv


def uncertainty(b: Block) -> dict[str, float | None]:
    """Standard deviations of a block's rotation (degrees, the norm of the three
    components') and position (scene units) from its last two Jacobians; None where
    the photos do not determine the motion (see the module).

    The residuals' spread counts per pixel (a cluster-robust sandwich): a pixel's three
    channels, consecutive in the residual vector (:meth:`Renderer.flat`), share their
    Monte Carlo paths and the photo's noise, so they are not three independent
    residuals. Counted per channel, the standard deviations were smaller (rotation
    median 0.054 against 0.098 deg) and understated the errors more: light benchmark, 20
    scenes at 48x48, error / sigma of the rotation median 3.29 per channel, 1.97 per
    pixel, errors within 2 sigma 0/20 and 7/20; clusters of 2x2 to 16x16 pixels changed
    it little more (1.9-2.1, 16 of the scenes) (BENCHMARKS.md, "Light poses: no lamp
    outline term")."""
    cov = covariance(b)
    if cov is None:
        return {"rotation_deg": None, "position": None}
    var = np.clip(np.diag(cov), 0.0, None)
    return {"rotation_deg": float(np.degrees(np.sqrt(var[3:6].sum()))),
            "position": float(np.sqrt(var[0:3].sum()) * b.unit)}


def settled_mean(iterates: list[dict], groups: list[list[Block]]) -> tuple[dict, dict]:
    """The mean of each motion's iterates of ``iterates``' last half that lie within
    its noise of its last one: walking back from the last, up to the first that does
    not (``TAIL_LEVEL`` of the chi-square of the difference of two iterates, twice
    :func:`covariance`); the whole last half where the photos do not determine the
    motion, where it has not settled (its last two steps were not both small: a
    polish that ran out of iterations wanders, and its mean is the better estimate;
    lamp draw 114, 20 iterations with a kink in each: the last half's mean 0.83
    degrees off, its last three iterates' 1.81), and where an iterate before the first
    one left out is within the noise again (in and out: the iterates wander about the
    minimum rather than approach it; lamp draw 501, whose last seven iterates were
    one, its steps refused: the half's mean 0.37 degrees off, the seven 0.55).
    Returns (latent name -> the means, (name, label) -> iterates averaged).

    Why: the mean of a polish's iterates lowers their noise where they scatter about
    the minimum, but a polish that approached from far (a lamp's from 5.5 degrees, two
    finite-difference steps an iteration at most) and settled late still had its
    approach in the last half: light draw 505 of the benchmark, the iterates of the
    last half 1.8 -> 0.13 degrees off the truth, their mean 1.0 (BENCHMARKS.md)."""
    from scipy.stats import chi2

    tail = iterates[len(iterates) // 2:]
    out = {n: np.mean([t[n] for t in tail], axis=0) for n in tail[0]}
    counts = {}
    for b in (b for g in groups for b in g):
        part = slice(b.start, b.start + b.size)
        kept, cov = len(tail), covariance(b)
        if cov is not None and b.settled >= 2:
            inverse, limit = np.linalg.pinv(2.0 * cov), float(chi2.ppf(TAIL_LEVEL, b.size))
            diffs = [t[b.name][part] - tail[-1][b.name][part] for t in tail]
            outside = [i for i, d in enumerate(diffs) if not d @ inverse @ d <= limit]
            # (an iterate within the noise before the last one outside: wandering, not an approach)
            if outside and len(outside) == outside[-1] + 1:
                kept = len(tail) - len(outside)
        out[b.name][part] = np.mean([t[b.name][part] for t in tail[-kept:]], axis=0)
        counts[b.name, b.label] = kept
    return out, counts


def polish_steps(renderer: Renderer, theta: dict, groups: list[list[Block]], iterations: int,
                 seed: int, callback=None) -> tuple[dict, int, dict]:
    """Iterations of ``groups`` from ``theta`` (updated in place) until every motion
    settled (after at least ``MIN_ITERATIONS`` sharp ones) or ``iterations`` ran:
    (the mean of the settled sharp iterates (:func:`settled_mean`), iterations run,
    (name, label) -> iterates in that mean)."""
    iterates, done = [], 0  # (of the sharp iterations)
    for it in range(iterations):
        done = it + 1
        sharp = all([sharpen(group, it) for group in groups])
        for gi, group in enumerate(groups):
            base = seed + 2 * (it * len(groups) + gi)
            _iterate(renderer, theta, group, (base, base + 1))
        if sharp:
            iterates.append({n: t.copy() for n, t in theta.items()})
        if callback is not None:
            callback(it)
        if (sharp and len(iterates) >= MIN_ITERATIONS
                and all(b.settled >= 2 for g in groups for b in g)):
            break
    iterates = iterates or [{n: t.copy() for n, t in theta.items()}]
    final, kept = settled_mean(iterates, groups)
    return final, done, kept


def sharp_poses(groups: list[list[Block]], blurs: dict) -> list[Block]:
    """The blocks of ``groups`` that are a pose polished sharp from the first (cameras
    start blurred already, as does a pose whose table says so)."""
    return [g[0] for g in groups
            if len(g) == 1 and g[0].label == "pose" and blurs[g[0].name, g[0].label] <= 0]


def second_chance(renderer: Renderer, final: dict, groups: list[list[Block]], blurs: dict,
                  iterations: int, seed: int) -> dict[tuple[str, str], dict[str, Any]]:
    """A pose polished on sharp images only may end in a shallow valley far from the
    photos' minimum, where the sharp images' linear model sees a minimum (BENCHMARKS.md,
    issue 13: pose seed 303 at 32x32 ended 15 degrees off, its loss 14 % above the
    truth's, the polish settled after 4 iterations; started on images blurred by a
    pixel it went the 15 degrees back). So from each such pose's end one iteration on
    blurred images probes: where its step is kept and reaches ``RESCUE_REACH``
    finite-difference steps or more (the images say "far"), the polish runs again from
    there, blurred first as a camera's, and its end replaces the first where it
    renders closer to the photos (the sharp loss of both, ``COMPARE_SEEDS`` paired
    renders). Updates ``final``; returns (name, label) -> what was done."""
    out = {}
    for first in sharp_poses(groups, blurs):
        probe = [Block(first.name, first.start, first.size, first.views, first.steps,
                       first.label, first.unit, blur=POLISH_BLUR["camera"], near=first.near)]
        theta = {n: t.copy() for n, t in final.items()}
        _iterate(renderer, theta, probe, (seed, seed + 1))
        info: dict[str, Any] = {"reach": probe[0].reach, "kept": probe[0].moved > 0,
                                "returned": "first"}
        out[first.name, first.label] = info
        if probe[0].moved == 0 or probe[0].reach < RESCUE_REACH:
            continue
        end, done, _ = polish_steps(renderer, theta, [probe], iterations, seed + 2)
        info |= adopt_lower(renderer, final, end, first, probe[0], "second",
                            seed + 4 * iterations + 3) | {"iterations": done}
    return out


def adopt_lower(renderer: Renderer, final: dict, end: dict, first: Block, other: Block,
                label: str, seed: int) -> dict[str, Any]:
    """Where ``end`` (a polish of ``other``, a copy of ``first``) renders closer to
    the photos than ``final`` (the sharp loss of both, ``COMPARE_SEEDS`` paired renders
    from ``seed``) and lies beyond its noise (:func:`apart`; ends within each other's
    noise are one minimum, ``one_minimum``: the first stays; so are ends whose
    covariances are not both determined where their losses differ by less than the
    photos' noise could move that difference, ``tied``), put ``first``'s motion of
    ``end`` into ``final`` and take ``other``'s report; returns the losses compared,
    how far apart the ends are and ``returned`` (``label`` or ``first``)."""
    compared = [compare_residuals(renderer, state, first, seed) for state in (final, end)]
    losses = [mean_loss(rs, first.threshold) for rs in compared]
    info = {"loss_first": losses[0], f"loss_{label}": losses[1], "returned": "first",
            "jumps": other.jumps,
            "apart": apart(final, end, first, other) | {
                "loss_noise": photo_noise_of_difference(*compared)}}
    far = info["apart"]
    far["two_minima"] = bool(far["beyond_noise"] and abs(losses[1] - losses[0])
                             < TWO_MINIMA * far["loss_noise"])
    # (two ends within each other's noise are one minimum: which renders closer is then
    # a toss of the renders' and the photos' noise, and the first stays)
    info["one_minimum"] = bool(far["sigmas"] is not None and not far["beyond_noise"])
    # (where no covariance says how far apart they are, ends whose losses differ by less
    # than the photos' own noise could move that difference are not told apart either:
    # pose 114 at 96x96, its ends 0.25 deg apart, their losses 0.006 of that noise apart,
    # returned the from-start end, 0.95 deg off against the first's 0.81; the first stays)
    info["tied"] = bool(far["sigmas"] is None
                        and abs(losses[1] - losses[0]) < far["loss_noise"])
    if losses[1] < losses[0] and not (info["one_minimum"] or info["tied"]):
        part = slice(first.start, first.start + first.size)
        final[first.name][part] = end[first.name][part]
        info["returned"] = label
        # (the report's standard deviation and loss: of the end returned)
        first.jacobians, first.residual = other.jacobians, other.residual
        first.weights, first.loss_after = other.weights, losses[1]
        first.moved += other.moved
        first.kinked += other.kinked
        first.jumps += other.jumps
    return info


def apart(final: dict, end: dict, first: Block, other: Block) -> dict[str, float | None]:
    """How far apart two polishes of one motion ended: ``final``'s (block ``first``) and
    ``end``'s (block ``other``): the rotation between them (degrees), the distance
    between their positions (scene units) and ``sigmas``, the Mahalanobis distance of
    the difference under the sum of the two ends' covariances (:func:`covariance`;
    None where either is not determined); ``beyond_noise`` where its square exceeds
    the chi-square's ``TAIL_LEVEL`` quantile (not one minimum seen through noise;
    whether they are two minima, or one end that did not get there, the losses say:
    ``TWO_MINIMA``, :func:`adopt_lower`)."""
    from scipy.stats import chi2

    from ..estimates.meshes import rotation_numpy

    part = slice(first.start, first.start + first.size)
    a, e = final[first.name][part], end[first.name][part]
    out: dict[str, Any] = {"rotation_deg": None,
                           "position": float(np.linalg.norm(e[:3] - a[:3]) * first.unit),
                           "sigmas": None, "beyond_noise": False}
    if first.size >= 6:  # (a rigid motion [t, w]; the tests' motions may be shorter)
        turn = rotation_numpy(a[3:6]).T @ rotation_numpy(e[3:6])
        out["rotation_deg"] = float(np.degrees(np.arccos(np.clip((np.trace(turn) - 1) / 2,
                                                                 -1, 1))))
    covs = [covariance(first), covariance(other)]
    if covs[0] is not None and covs[1] is not None:
        d = e - a
        square = float(d @ np.linalg.pinv(covs[0] + covs[1]) @ d)
        out["sigmas"] = float(np.sqrt(max(square, 0.0)))
        out["beyond_noise"] = bool(square > chi2.ppf(TAIL_LEVEL, first.size))
    return out


def from_start(renderer: Renderer, final: dict, start: dict, groups: list[list[Block]],
               blurs: dict, iterations: int, seed: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The steps can carry a pose out of the basin it started in along a direction
    their blurred images hardly see (pose draw 402 of the benchmark: a blob with a
    checker finer than a pixel; the steps fixed its position, 1.3 % of the diagonal
    off, and turned it from 2.09 to 2.97 degrees off, where the polish settled at 2.80
    with a standard deviation of 0.11, the truth's loss 6 % lower; polished from its
    start it ends 0.31 off). So each pose (as :func:`second_chance` chooses them) is
    also polished from the run's start, ``start`` (latent name -> values), on images
    blurred by ``FROM_START_BLUR`` pixels first, and that end replaces the first where
    it renders closer to the photos and lies beyond its noise (:func:`adopt_lower`).
    Not for a light's pose
    (see :func:`polish`). Updates ``final``; returns (name, label) -> what was done."""
    out = {}
    for first in sharp_poses(groups, blurs):
        if first.name not in start:
            continue
        part = slice(first.start, first.start + first.size)
        theta = {n: t.copy() for n, t in final.items()}
        theta[first.name][part] = start[first.name][part]
        again = Block(first.name, first.start, first.size, first.views, first.steps,
                      first.label, first.unit, blur=FROM_START_BLUR, near=first.near)
        end, done, _ = polish_steps(renderer, theta, [[again]], iterations, seed)
        out[first.name, first.label] = adopt_lower(
            renderer, final, end, first, again, "start", seed + 4 * iterations + 3) | {
            "iterations": done}
    return out


def compare_residuals(renderer: Renderer, state: dict, block: Block, seed: int) -> list:
    """The sharp residuals of ``block``'s views at ``state``, ``COMPARE_SEEDS`` renders
    (seeds from ``seed``: the same for every state compared, so that most of their
    noise cancels)."""
    return [renderer.flat(renderer.compared(state, block.views, seed + k), block.views)
            for k in range(COMPARE_SEEDS)]


def compare_loss(renderer: Renderer, state: dict, block: Block, seed: int) -> float:
    """The sharp Huber loss of ``block``'s views at ``state`` (its first iteration's
    threshold), the mean over :func:`compare_residuals`."""
    return mean_loss(compare_residuals(renderer, state, block, seed), block.threshold)


def mean_loss(residuals: list, c: float) -> float:
    """The Huber loss (threshold ``c``) per residual, the mean over ``residuals``."""
    return float(np.mean([huber_loss(r, c) / r.size for r in residuals]))


def photo_noise_of_difference(first: list, other: list) -> float:
    """The standard deviation that the photos' own noise gives the difference of the
    (per residual) losses of two states, from their residuals (lists of paired
    renders): a photo pixel's noise moves the two states' squared residuals by its
    value times the two renders' difference, so the difference's standard deviation is
    the noise's (the residuals' robust spread at the first state) times the norm of the
    renders' difference, its three channels counted as one (they share the photo's
    noise and the Monte Carlo path; see :func:`uncertainty`)."""
    r0, r1 = np.mean(first, axis=0), np.mean(other, axis=0)
    sigma = huber_weights(r0)[1] / HUBER
    change = (r1 - r0).reshape(-1, PIXEL).sum(axis=1)
    return float(sigma * np.linalg.norm(change) / r0.size)


def polish(run, *, callback=None) -> dict[str, Any]:
    """Levenberg-Marquardt iterations on the rigid motions of ``run`` (see the
    module); leaves the polished latents in ``run.latents`` (and the scene);
    returns result.json's ``polished``: latent name -> report."""
    groups = blocks_of(run)
    if not groups:
        return {}
    start_time = time.perf_counter()
    by_name = {e.key: e for e in run.estimates}
    names = sorted({b.name for g in groups for b in g})
    iterations = max(polish_iterations(by_name[n]) for n in names)
    views = run.problem.views
    pixels = float(np.mean([views[v].photo.shape[0] * views[v].photo.shape[1]
                            for v in run.context.fit]))
    spp = max(polish_spp(by_name[n], pixels) for n in names)
    renderer = Renderer(run, spp)
    theta = {n: np.array(run.latents[n], dtype=np.float64).ravel() for n in names}
    begun = getattr(run, "start_state", None) or {}
    start = {n: np.array(begun[n], dtype=np.float64).ravel() for n in names if n in begun}
    start = {n: t for n, t in start.items() if t.shape == theta[n].shape}
    blurs = {(b.name, b.label): b.blur for g in groups for b in g}  # (sharpen() clears them)
    seed = SEED_BASE + 1009 * int(run.problem.config.optimize.seed)
    near_clip = censored = None
    if any(by_name[n].leaves_out_near_clip() for n in names):
        near_clip = renderer.leave_out_near_clip(theta, seed - 1)
    elif run.problem.config.photos.clipped == "auto":
        censored = renderer.censor_clipped(theta, seed - 1)

    def each(it: int) -> None:
        renderer.set(theta)
        run.latents.write_scene()
        callback(it)

    final, done, kept = polish_steps(renderer, theta, groups, iterations, seed,
                                     each if callback is not None else None)
    chances = second_chance(renderer, final, groups, blurs, iterations, seed + 7919)
    # (not where the near-clip rule chose the pixels by a render at the steps' end: a
    # pose far from there moves its misfit into the pixels left out, and its loss
    # looks lower; lamp 113 of the benchmark: 9 % lower, 0.10 -> 0.77 degrees off)
    starts = (from_start(renderer, final, start, groups, blurs, iterations, seed + 2 * 7919)
              if start and near_clip is None else {})
    renderer.set(final)
    run.latents.write_scene()
    seconds = time.perf_counter() - start_time
    report = {}
    for n in names:
        blocks = [b for g in groups for b in g if b.name == n]
        report[n] = {"iterations": done, "spp": spp, "compare_spp": renderer.compare_spp,
                     "seconds": seconds,
                     "returned": "mean of the settled iterates (each motion's: averaged)",
                     "motions": {b.label: {"loss_before": b.loss_before,
                                           "averaged": kept[b.name, b.label],
                                           "loss_after": b.loss_after, "steps_kept": b.moved,
                                           "kinked": b.kinked, "jumps": b.jumps,
                                           "blur": blurs[b.name, b.label],
                                           "sigma": uncertainty(b)}
                                 | ({"second_chance": chances[b.name, b.label]}
                                    if (b.name, b.label) in chances else {})
                                 | ({"from_start": starts[b.name, b.label]}
                                    if (b.name, b.label) in starts else {})
                                 for b in blocks}}
        if near_clip is not None:
            report[n]["near_clip"] = near_clip
        if censored is not None:
            report[n]["censored"] = censored
    for line in ambiguous(report):
        warnings.warn(line, stacklevel=2)
    return report


def ambiguous(report: dict[str, Any]) -> list[str]:
    """What a polish report (:func:`polish`) says of motions whose two polishes (from
    the steps' end and from the run's start, or a second chance) ended beyond each
    other's noise (:func:`apart`): one line each, for the run's warnings. The end
    returned is the one that renders closer to the photos, but the photos' loss has
    two minima there, and the lower may be the wrong one: pose draw 800 of the
    benchmark (BENCHMARKS.md) ended 3.7 degrees off from a 1.8 degree start, its
    standard deviation 0.19, "completed" with nothing in its report that said so."""
    out = []
    for name, entry in report.items():
        for label, motion in entry["motions"].items():
            for what, other in (("from_start", "the run's start"),
                                ("second_chance", "a blurred second chance")):
                far = (motion.get(what) or {}).get("apart") or {}
                if not far.get("two_minima"):
                    continue
                kept = {"first": "the end from the steps", "start": "the end from the start",
                        "second": "the second chance's end"}[motion[what]["returned"]]
                turn = "" if far["rotation_deg"] is None else f"{far['rotation_deg']:.2f} deg and "
                out.append(
                    f"TWO MINIMA: polish: {name} ({label}): polished from the steps' end and from "
                    f"{other}, it ended {turn}"
                    f"{far['position']:.3g} (scene units) apart, {far['sigmas']:.1f} standard "
                    f"deviations: two minima of the photos' loss; {kept} renders closer to "
                    "the photos and was returned, but it may be the wrong one (result.json: "
                    f"polished.{name}.motions.{label}.{what}.apart)")
    return out


def lowered_everywhere(report: dict[str, Any]) -> bool:
    """Whether a :func:`polish` report kept a step of every motion, each lowering its
    loss (a run whose steps ended no better than its start is then better)."""
    motions = [m for r in report.values() for m in r["motions"].values()]
    return bool(motions) and all(
        m["steps_kept"] > 0 and m["loss_before"] is not None and m["loss_after"] is not None
        and np.isfinite(m["loss_after"]) and m["loss_after"] < m["loss_before"] for m in motions)
