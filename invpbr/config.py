"""The problem description of a scene folder: ``invpbr.toml``.

Pure Python (no Mitsuba): parsed into dataclasses whose fields document
themselves, validated with errors that name the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOSSES = ("l1", "l2", "relative_l2", "cauchy")
GRADIENTS = ("auto", "ad", "fd")
ESTIMATE_KINDS = ("auto", "pose", "shape", "camera")
GAINS = ("none", "exposure", "rgb")
PRECISIONS = ("single", "half")
GUIDING = ("none", "grid", "octree")
SPACES = ("auto", "linear", "log")
ENVMAP_MODELS = ("texels", "sh", "sun_sky")


@dataclass
class EvaluateConfig:
    held_out: list[str] = field(default_factory=list)
    """Sensor ids whose photos are not fitted; the result reports their
    novel-view PSNR (and that of the starting guess)."""
    relight: list[str] = field(default_factory=list)
    """Environment maps (files relative to the scene folder) that replace every
    envmap of the estimate and of truth.xml for relighting PSNRs."""
INTEGRATORS = ("auto", "prb", "prb_basic", "direct_projective", "prb_projective", "prb_reparam",
               "path", "scene")


@dataclass
class RenderConfig:
    spp: int | list[int] = 16
    """Samples per pixel of each view's render in an optimization step; a
    list is a schedule: the iterations split evenly into one stage per entry
    (e.g. ``[4, 16, 64]``: few samples while far off, more near the end)."""
    spp_grad: int = 0
    """Samples per pixel of the gradient (adjoint) pass of prb-family and
    projective integrators (Mitsuba's ``spp_grad``); 0: the same as ``spp``."""
    max_depth: int = 4
    """Longest light path (Mitsuba's ``max_depth``; -1 for unbounded)."""
    integrator: str = "auto"
    """``auto`` (chosen from what is estimated), a Mitsuba integrator type, or
    ``scene`` (the integrator written in scene.xml)."""
    spp_final: int = 64
    """Samples per pixel of the final renders saved with a result."""
    guiding: str = "octree"
    """Projective integrators: how indirect visibility edges (shadow edges)
    are sampled: ``octree`` (Mitsuba's default), ``grid``, or ``none``
    (uniform: no setup cost, but on a moving shadow its derivative was 0.97
    off with 2.5x its own size in noise, tests/test_discontinuities.py).
    Directly visible silhouettes do not depend on it."""
    proj_seed_spp: int = 512
    """Projective integrators: seed rays per pixel of the search for
    visibility edges and of the guiding build (Mitsuba's default). More is
    less biased on shadows (512 gave a shadow derivative 17 % too small with a
    fresh octree per render in docs/discontinuities.md, 4192 agreed) but the
    guiding build costs in proportion: 7 s at 512 against 55 s at 4096 for a
    16x16 build on 2 CPU cores."""
    guiding_resolution: int = 16
    """Projective integrators: build the guiding structure from a copy of
    each view this many pixels on its longest side (0: the view itself). Its
    cost grows with the pixels: 110 s for 64x64 against 7 s for 16x16 on 2
    CPU cores, same derivatives within noise."""
    guiding_every: int = 10
    """Projective integrators: rebuild each view's guiding structure every
    this many renders and reuse it in between (1: every render, as Mitsuba
    does; the octree costs 1-5 s per build on 2 CPU cores)."""


def spp_at(render: RenderConfig, iteration: int, iterations: int) -> int:
    """Samples per pixel of step ``iteration`` under ``render.spp`` (an int or
    a schedule of evenly long stages)."""
    if not isinstance(render.spp, list):
        return int(render.spp)
    n = len(render.spp)
    stage = min(n - 1, iteration * n // max(iterations, 1))
    return int(render.spp[stage])


@dataclass
class EstimateConfig:
    key: str | list[str] = ""
    """A key of ``mi.traverse(scene)``; shell-style globs (``*``, ``?``) allowed.
    ``kind = "pose"`` also takes a list of keys: meshes moved together.
    ``kind = "camera"``: a glob over sensor ids (default ``*``: every photo)."""
    kind: str = "auto"
    """``auto``: a value, bitmap texture or environment map, from the key;
    ``pose``: a rigid transform of meshes (``<shape>.vertex_positions``) or an
    analytic shape (``<shape>.to_world``), e.g. an object or an area light;
    ``shape``: free vertex positions with large-steps preconditioning;
    ``camera``: each matching photo's camera pose (rotation and translation),
    refined by moving the scene relative to the camera (see invpbr.estimates.cameras)."""
    scale: bool = False
    """``kind = "pose"``: also estimate a uniform scale."""
    lambda_: float = 19.0
    """``kind = "shape"``: large-steps smoothness lambda (TOML: ``lambda``);
    larger is smoother and slower to reach detail."""
    remesh: int = 0
    """``kind = "shape"``: isotropic remeshings, evenly spaced over the run;
    each targets 0.75x the mesh's mean edge length (needs gpytoolbox)."""
    bounds: tuple[float, float] | None = None
    """Values are clipped into ``[lo, hi]`` after every step."""
    lr: float | None = None
    """Learning rate of this parameter (default: ``[optimize] lr``)."""
    resolution: list[int] | None = None
    """Textures and environment maps: resolution per coarse-to-fine stage,
    e.g. ``[16, 32, 64]`` (square textures; envmap heights, width = 2 x
    height); the stages split the iterations evenly. Default: a texture's
    resolution in scene.xml, one stage; for an envmap, 1/4, 1/2 and all of it."""
    tv: float | None = None
    """Textures and environment maps: weight of the total-variation
    regularizer (on log radiance for envmaps). Default: 0 for textures,
    ``ENVMAP_TV`` for envmaps."""
    space: str = "auto"
    """``linear``, ``log`` (optimize the logarithm: positive values, steps
    relative to the value), or ``auto``: log for emitters' radiance,
    intensity, scale and envmaps, linear otherwise."""
    model: str = "texels"
    """Environment maps only: ``texels`` (every texel), ``sh`` (spherical
    harmonics up to ``sh_order``) or ``sun_sky`` (a sun lobe with direction
    and colour plus a sky gradient) — low-order models for few views."""
    sh_order: int = 2
    """Environment maps with ``model = "sh"``: highest band (2: 9 coefficients)."""
    white_balance: float = 0.0
    """Environment maps: weight of a prior pulling the map's mean colour to
    grey (log-chromaticity), for when albedo and light colour are both unknown."""
    gradient: str = "auto"
    """``ad`` (Mitsuba's automatic differentiation), ``fd`` (central finite
    differences of the loss, for scalars and colours), or ``auto``: ``fd``
    where Mitsuba 3.9.1's gradient of the parameter is known to be biased."""


@dataclass
class OptimizeConfig:
    iterations: int = 200
    """Optimization steps."""
    lr: float = 0.02
    """Adam learning rate of every parameter without its own ``lr``."""
    lr_decay: float = 1.0
    """Learning rates at the last step, as a fraction of their start: constant
    for the first half of the run, then shrinking geometrically (1: constant
    throughout). Below 1, an estimate that wanders with Monte Carlo noise
    around the answer settles."""
    loss: str = "l1"
    """Image loss: ``l1``, ``l2``, ``relative_l2`` or ``cauchy`` (robust:
    ``log(1 + (r / loss_scale)^2)``, pixels far off the render, such as
    people or cars that are not in the model, weigh little)."""
    loss_scale: float = 0.05
    """``loss = "cauchy"``: the residual (linear units) at which a pixel's
    weight has halved."""
    views_per_step: int = 0
    """Views rendered per step (a random subset); 0 means all views."""
    seed: int = 0
    """Seed of the renders' samplers and of the view subsets."""
    batch: bool = True
    """Render all views of a step with one call (Mitsuba's ``batch`` sensor:
    the views side by side in one image, one kernel), where the views' films
    match and the integrator is not projective; 1.9x faster per step on the
    3-view principled sphere. Same expected images; other random numbers.
    With ``views_per_step``, perspective views are rendered by that many
    sensors of one batch, aimed anew at each step's views (and a frozen step
    is recorded once for all subsets)."""
    precision: str = "single"
    """``single`` or ``half``: estimated bitmap textures (and every other bitmap
    of the scene) stored in float16 in the scene, their latents too, with
    Dr.Jit's GradScaler against underflowing gradients. Adam keeps float32
    moments (its ``promote_fp16``: float16 second moments of unscaled
    gradients underflow). Envmaps and values stay float32."""
    freeze: bool = True
    """Record each step's kernels once with ``dr.freeze`` and replay them
    (1.3-2x faster per step on the shipped material scenes, same estimates
    to float rounding), where the problem allows it; elsewhere steps are
    traced, silently: not with projective integrators, finite-difference
    gradients, per-step view subsets, per-photo gains, camera refinement,
    half precision or coarse-to-fine stages (Dr.Jit 1.5 replayed those
    wrongly at times). A replay that Dr.Jit refuses falls back to tracing
    with a warning."""


@dataclass
class PhotosConfig:
    resize: bool = False
    """Resize photos whose size differs from their sensor's film (with a
    warning) instead of stopping with an error."""
    saturation: float = 0.98
    """Pixels of PNG/JPEG photos with a channel at or above this linear value
    are clipped by the camera and left out of the loss (0: keep them)."""
    gain: str = "none"
    """Per-photo gain estimated with the scene, for photos whose exposure and
    white balance differ: ``none``, ``exposure`` (one factor per photo) or
    ``rgb`` (one factor per photo and colour channel). A render is multiplied
    by its photo's gain before it is compared with the photo."""
    gain_reference: str = "mean"
    """The gauge of the gains (a common factor of all gains is the same as
    brighter lights): ``mean`` holds the geometric mean over the fitted photos
    at 1, a photo id holds that photo's gain at 1."""
    gain_lr: float = 0.02
    """Adam learning rate of the gains' logarithms."""


@dataclass
class CamerasConfig:
    file: str = ""
    """A camera file, relative to the scene folder, whose frames replace the
    sensors of scene.xml: a NeRF / instant-ngp ``transforms.json``, a COLMAP
    model folder (cameras/images .txt or .bin) or an LLFF ``poses_bounds.npy``.
    Each frame becomes a sensor whose id is its photo's file stem; photos are
    found by the frames' file paths. Empty: the sensors of scene.xml."""
    resolution: list[int] | None = None
    """Working resolution ``[width, height]``: photos (filtered) and
    intrinsics are rescaled together. Default: the camera file's."""
    truth: str = ""
    """The true cameras (a second camera file, same ids), for errors of
    refined cameras and of the gains (frames' ``"gain": [r, g, b]``).
    Default: the sensors of truth.xml, when it has the same ids."""
    undistort: bool = True
    """Undistort photos of cameras with lens distortion (OpenCV, the
    ``photos`` extra); false: refuse them."""


@dataclass
class ReportConfig:
    gradients: bool = True
    """Gradient images at the start and at the end of a run, in the result
    folder's gradients/ and report.html: dLoss/dpixel, and for each estimate
    dI/dθ and its per-pixel contribution (forward mode) or, for textures and
    environment maps, the gradient as an image. Costs a few renders per
    estimated direction (see BENCHMARKS.md)."""
    gradient_views: int = 1
    """How many fitted views get gradient images (the first ones)."""
    gradient_spp: int = 16
    """Samples per pixel of the gradient images' renders."""


def parse_report_config(table: Any, source: str) -> ReportConfig:
    """The ``[report]`` table (what report.html shows beyond the result itself)."""
    r = ReportConfig(**_check_table("report", table, ReportConfig, source))
    if not isinstance(r.gradients, bool):
        raise ConfigError(f"{source}: report.gradients must be true or false, found {r.gradients!r}")
    _number(source, "report.gradient_views", r.gradient_views, integer=True, minimum=1)
    _number(source, "report.gradient_spp", r.gradient_spp, integer=True, minimum=1)
    return r


@dataclass
class ProblemConfig:
    render: RenderConfig = field(default_factory=RenderConfig)
    estimate: list[EstimateConfig] = field(default_factory=list)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    photos: PhotosConfig = field(default_factory=PhotosConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    cameras: CamerasConfig = field(default_factory=CamerasConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """An invpbr.toml that cannot be used; the message names file and key."""


def _check_table(where: str, table: Any, cls: type, source: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] must be a table, found {type(table).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {where}.{key}; expected one of {', '.join(known)}")
    return table


def _number(source: str, name: str, value: Any, *, integer: bool = False,
            minimum: float | None = None) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{source}: {name} must be {kind}, found {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{source}: {name} must be >= {minimum}, found {value!r}")
    return value


def parse_config(data: dict[str, Any], *, source: str = "invpbr.toml") -> ProblemConfig:
    """Validate a parsed TOML document into a :class:`ProblemConfig`.

    Args:
        data: the document as from ``tomllib.load``.
        source: file name used in error messages.

    Raises:
        ConfigError: unknown tables or keys, wrong types or values.
    """
    known_tables = {"render", "estimate", "optimize", "photos", "evaluate", "cameras", "report"}
    for name in data:
        if name not in known_tables:
            raise ConfigError(f"{source}: unknown table [{name}]; expected {', '.join(sorted(known_tables))}")

    r = _check_table("render", data.get("render", {}), RenderConfig, source)
    render = RenderConfig(**r)
    if isinstance(render.spp, list):
        if not render.spp:
            raise ConfigError(f"{source}: render.spp must be a positive integer or a non-empty "
                              "list of them")
        for i, v in enumerate(render.spp):
            _number(source, f"render.spp[{i}]", v, integer=True, minimum=1)
    else:
        _number(source, "render.spp", render.spp, integer=True, minimum=1)
    _number(source, "render.spp_grad", render.spp_grad, integer=True, minimum=0)
    _number(source, "render.spp_final", render.spp_final, integer=True, minimum=1)
    _number(source, "render.max_depth", render.max_depth, integer=True, minimum=-1)
    _number(source, "render.guiding_every", render.guiding_every, integer=True, minimum=1)
    _number(source, "render.proj_seed_spp", render.proj_seed_spp, integer=True, minimum=1)
    _number(source, "render.guiding_resolution", render.guiding_resolution, integer=True,
            minimum=0)
    if render.guiding not in GUIDING:
        raise ConfigError(f"{source}: render.guiding = {render.guiding!r}; expected one of "
                          f"{', '.join(GUIDING)}")
    if render.integrator not in INTEGRATORS:
        raise ConfigError(f"{source}: render.integrator = {render.integrator!r}; expected one of "
                          f"{', '.join(INTEGRATORS)}")

    o = _check_table("optimize", data.get("optimize", {}), OptimizeConfig, source)
    opt = OptimizeConfig(**o)
    _number(source, "optimize.iterations", opt.iterations, integer=True, minimum=0)
    _number(source, "optimize.lr", opt.lr, minimum=0)
    _number(source, "optimize.lr_decay", opt.lr_decay)
    if not 0 < opt.lr_decay <= 1:
        raise ConfigError(f"{source}: optimize.lr_decay must be in (0, 1], found {opt.lr_decay!r}")
    _number(source, "optimize.views_per_step", opt.views_per_step, integer=True, minimum=0)
    _number(source, "optimize.seed", opt.seed, integer=True, minimum=0)
    if not isinstance(opt.batch, bool):
        raise ConfigError(f"{source}: optimize.batch must be true or false, found {opt.batch!r}")
    if not isinstance(opt.freeze, bool):
        raise ConfigError(f"{source}: optimize.freeze must be true or false, found {opt.freeze!r}")
    if opt.precision not in PRECISIONS:
        raise ConfigError(f"{source}: optimize.precision = {opt.precision!r}; expected one of "
                          f"{', '.join(PRECISIONS)}")
    if opt.loss not in LOSSES:
        raise ConfigError(f"{source}: optimize.loss = {opt.loss!r}; expected one of {', '.join(LOSSES)}")
    _number(source, "optimize.loss_scale", opt.loss_scale)
    if not opt.loss_scale > 0:
        raise ConfigError(f"{source}: optimize.loss_scale must be > 0, found {opt.loss_scale!r}")

    p = _check_table("photos", data.get("photos", {}), PhotosConfig, source)
    photos = PhotosConfig(**p)
    if not isinstance(photos.resize, bool):
        raise ConfigError(f"{source}: photos.resize must be true or false, found {photos.resize!r}")
    if photos.gain not in GAINS:
        raise ConfigError(f"{source}: photos.gain = {photos.gain!r}; expected one of "
                          f"{', '.join(GAINS)}")
    if not isinstance(photos.gain_reference, str) or not photos.gain_reference:
        raise ConfigError(f"{source}: photos.gain_reference must be \"mean\" or a photo id, "
                          f"found {photos.gain_reference!r}")
    _number(source, "photos.gain_lr", photos.gain_lr, minimum=0)
    _number(source, "photos.saturation", photos.saturation, minimum=0)

    c = _check_table("cameras", data.get("cameras", {}), CamerasConfig, source)
    cameras = CamerasConfig(**c)
    for name in ("file", "truth"):
        if not isinstance(getattr(cameras, name), str):
            raise ConfigError(f"{source}: cameras.{name} must be a file name, found "
                              f"{getattr(cameras, name)!r}")
    if cameras.truth and not cameras.file:
        raise ConfigError(f"{source}: cameras.truth needs cameras.file (the cameras to refine)")
    if cameras.resolution is not None:
        res = cameras.resolution
        if (not isinstance(res, list) or len(res) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in res)):
            raise ConfigError(f"{source}: cameras.resolution must be [width, height] in pixels, "
                              f"found {res!r}")
        if not cameras.file:
            raise ConfigError(f"{source}: cameras.resolution needs cameras.file (scene.xml's "
                              "sensors set their own film size)")
    if not isinstance(cameras.undistort, bool):
        raise ConfigError(f"{source}: cameras.undistort must be true or false, found "
                          f"{cameras.undistort!r}")

    ev = _check_table("evaluate", data.get("evaluate", {}), EvaluateConfig, source)
    evaluate = EvaluateConfig(**ev)
    for name in ("held_out", "relight"):
        value = getattr(evaluate, name)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{source}: evaluate.{name} must be a list of strings, found {value!r}")

    tables = data.get("estimate", [])
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list):
        raise ConfigError(f"{source}: [[estimate]] must be an array of tables")
    estimates = []
    for i, t in enumerate(tables):
        where = f"estimate[{i}]"
        if isinstance(t, dict) and "lambda" in t:
            t = {("lambda_" if k == "lambda" else k): v for k, v in t.items()}
        _check_table(where, t, EstimateConfig, source)
        if isinstance(t, dict) and t.get("kind") == "camera":
            t = {"key": "*", **t}
        key = t.get("key")
        if isinstance(key, list) and t.get("kind") == "pose":
            if not key or not all(isinstance(k, str) and k for k in key):
                raise ConfigError(f"{source}: {where}.key must be a list of mi.traverse keys, "
                                  f"found {key!r}")
        elif not isinstance(key, str) or not key:
            raise ConfigError(f"{source}: {where}.key is missing; it must name a mi.traverse key"
                              + (" (a list of keys only with kind = \"pose\")"
                                 if isinstance(key, list) else ""))
        e = EstimateConfig(**t)
        where = f"estimate[{i}] (key {e.key!r})"
        if e.bounds is not None:
            b = e.bounds
            if (not isinstance(b, (list, tuple)) or len(b) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
                raise ConfigError(f"{source}: {where}.bounds must be [lo, hi], found {b!r}")
            if not b[0] < b[1]:
                raise ConfigError(f"{source}: {where}.bounds must have lo < hi, found {list(b)!r}")
            e.bounds = (float(b[0]), float(b[1]))
        if e.lr is not None:
            _number(source, f"{where}.lr", e.lr, minimum=0)
        if e.tv is not None:
            _number(source, f"{where}.tv", e.tv, minimum=0)
        _number(source, f"{where}.white_balance", e.white_balance, minimum=0)
        _number(source, f"{where}.sh_order", e.sh_order, integer=True, minimum=0)
        if e.space not in SPACES:
            raise ConfigError(f"{source}: {where}.space = {e.space!r}; expected one of {', '.join(SPACES)}")
        if e.model not in ENVMAP_MODELS:
            raise ConfigError(f"{source}: {where}.model = {e.model!r}; expected one of "
                              f"{', '.join(ENVMAP_MODELS)}")
        if e.kind not in ESTIMATE_KINDS:
            raise ConfigError(f"{source}: {where}.kind = {e.kind!r}; expected one of "
                              f"{', '.join(ESTIMATE_KINDS)}")
        if not isinstance(e.scale, bool):
            raise ConfigError(f"{source}: {where}.scale must be true or false, found {e.scale!r}")
        _number(source, f"{where}.lambda", e.lambda_, minimum=0)
        _number(source, f"{where}.remesh", e.remesh, integer=True, minimum=0)
        if e.kind != "pose" and e.scale:
            raise ConfigError(f"{source}: {where}.scale applies to kind = \"pose\" only")
        if e.kind != "shape" and (e.remesh or "lambda_" in t):
            raise ConfigError(f"{source}: {where}: lambda and remesh apply to kind = \"shape\" only")
        if e.gradient not in GRADIENTS:
            raise ConfigError(f"{source}: {where}.gradient = {e.gradient!r}; expected one of "
                              f"{', '.join(GRADIENTS)}")
        if e.resolution is not None:
            res = [e.resolution] if isinstance(e.resolution, int) else e.resolution
            if (not isinstance(res, list) or not res
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in res)):
                raise ConfigError(f"{source}: {where}.resolution must be a positive integer or a list "
                                  f"of them, found {e.resolution!r}")
            e.resolution = res
        estimates.append(e)
    cams = [e for e in estimates if e.kind == "camera"]
    if len(cams) > 1:
        raise ConfigError(f"{source}: more than one [[estimate]] with kind = \"camera\"; use one "
                          "key glob over the sensor ids")
    return ProblemConfig(render=render, estimate=estimates, optimize=opt, photos=photos,
                         evaluate=evaluate, cameras=cameras,
                         report=parse_report_config(data.get("report", {}), source))


def load_config(path: str | Path) -> ProblemConfig:
    """Read and validate an ``invpbr.toml``.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: the file is not valid TOML or not a valid problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (every scene folder needs an invpbr.toml)")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    return parse_config(data, source=str(path))
