"""The problem description of a scene folder: ``invpbr.toml``.

Pure Python (no Mitsuba): dataclasses whose fields document themselves; their
types and bounds are validated by pydantic (strict: ``1.5`` is no integer,
``"16"`` no number, ``nan`` no finite number), with errors that name the file,
the table and the key, and suggest close names for unknown ones.
``config_schema()`` is the JSON schema of the file (``invpbr schema``).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import ConfigDict, Field, SkipValidation, Strict, TypeAdapter, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

#: How every table is validated: unknown keys refused, finite numbers (and, through
#: the types below, no coercion: ``1.5`` is no integer, ``"yes"`` no boolean).
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

Int = Annotated[int, Strict()]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
NonNegative = Annotated[float, Strict(), Field(ge=0)]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict(), Field(min_length=1)]

LOSSES = ("l1", "l2", "relative_l2", "cauchy")
GRADIENTS = ("auto", "ad", "fd")
#: ``kind`` values of ``[[estimate]]`` tables: ``auto`` and every kind registered with
#: :func:`invpbr.estimates.register_kind` that takes a table of its own.
ESTIMATE_KINDS = ["auto"]
#: Options (name -> default) a registered kind adds to its ``[[estimate]]`` tables.
KIND_OPTIONS: dict[str, dict[str, Any]] = {}


def register_estimate_kind(name: str, options: dict[str, Any] | None = None, *,
                           table: bool = True) -> None:
    """Make ``kind = name`` valid in ``[[estimate]]`` tables (``table``), with the
    extra ``options`` its tables may set (they arrive in
    :attr:`EstimateConfig.options`). Called by
    :func:`invpbr.estimates.register_kind`."""
    if table and name not in ESTIMATE_KINDS:
        ESTIMATE_KINDS.append(name)
    KIND_OPTIONS[name] = dict(options or {})
GAINS = ("none", "exposure", "rgb")
PRECISIONS = ("single", "half")
GUIDING = ("none", "grid", "octree")
SPACES = ("auto", "linear", "log")
ENVMAP_MODELS = ("texels", "sh", "sun_sky")


@dataclass
class EvaluateConfig:
    held_out: list[Text] = field(default_factory=list)
    """Sensor ids whose photos are not fitted; the result reports their
    novel-view PSNR (and that of the starting guess)."""
    relight: list[Text] = field(default_factory=list)
    """Environment maps (files relative to the scene folder) that replace every
    envmap of the estimate and of truth.xml for relighting PSNRs."""
    truth_mesh: SkipValidation[str] = ""
    """``[reconstruct]``: the true mesh (a PLY/OBJ file relative to the scene
    folder), for the Chamfer distance and normal angle of the reconstruction."""


INTEGRATORS = ("auto", "prb", "prb_basic", "direct_projective", "prb_projective", "path", "scene")

#: Integrators that are no longer offered -> why, and what to use instead.
RETIRED_INTEGRATORS = {
    "prb_reparam": "invpbr's prb_reparam was retired: its derivatives were wrong against finite "
                   "differences on 7 of 8 visibility cases at its defaults, and even on continuous "
                   "parameters (the image-sum derivative of a diffuse albedo under a constant sky "
                   "83 % off, a GGX roughness 167 % off, where prb and prb_projective are within "
                   "1 %; docs/reparam.md). Use integrator = \"auto\" (prb_projective or "
                   "direct_projective where edges move, prb otherwise)"}

Loss = Literal["l1", "l2", "relative_l2", "cauchy"]
Gradient = Literal["auto", "ad", "fd"]
Gain = Literal["none", "exposure", "rgb"]
Clipped = Literal["auto", "bound", "mask"]
Precision = Literal["single", "half"]
Guiding = Literal["none", "grid", "octree"]
Space = Literal["auto", "linear", "log"]
EnvmapModel = Literal["texels", "sh", "sun_sky"]
AdamMoments = Literal["auto", "component", "group", "motion", "hybrid"]
Integrator = Literal["auto", "prb", "prb_basic", "direct_projective", "prb_projective",
                     "path", "scene"]


@dataclass
class RenderConfig:
    spp: SkipValidation[int | list[int]] = 16
    """Samples per pixel of each view's render in an optimization step; a
    list is a schedule: the iterations split evenly into one stage per entry
    (e.g. ``[4, 16, 64]``: few samples while far off, more near the end)."""
    spp_grad: NonNegativeInt = 0
    """Samples per pixel of the gradient (adjoint) pass of prb-family and
    projective integrators (Mitsuba's ``spp_grad``); 0: the same as ``spp``."""
    max_depth: Annotated[int, Strict(), Field(ge=-1)] = 4
    """Longest light path (Mitsuba's ``max_depth``; -1 for unbounded)."""
    integrator: Integrator = "auto"
    """``auto`` (chosen from what is estimated), a Mitsuba integrator type, or
    ``scene`` (the integrator written in scene.xml)."""
    spp_final: PositiveInt = 64
    """Samples per pixel of the final renders saved with a result."""
    guiding: Guiding = "octree"
    """Projective integrators: how indirect visibility edges (shadow edges)
    are sampled: ``octree`` (Mitsuba's default), ``grid``, or ``none``
    (uniform: no setup cost, but it loses most of a moving shadow's
    derivative; docs/discontinuities.md). Directly visible silhouettes do not
    depend on it."""
    proj_seed_spp: PositiveInt = 512
    """Projective integrators: seed rays per pixel of the search for
    visibility edges and of the guiding build (Mitsuba's default). More is
    less biased on shadows but the guiding build costs in proportion
    (measurements: README, "Geometry: visibility discontinuities")."""
    guiding_resolution: NonNegativeInt = 16
    """Projective integrators: build the guiding structure from a copy of
    each view this many pixels on its longest side (0: the view itself). Its
    cost grows with the pixels; the derivatives agree within noise (README)."""
    guiding_every: PositiveInt = 10
    """Projective integrators: rebuild each view's guiding structure every
    this many renders and reuse it in between (1: every render, as Mitsuba
    does)."""


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
    key: SkipValidation[str | list[str]] = ""
    """A key of ``mi.traverse(scene)``; shell-style globs (``*``, ``?``) allowed.
    ``kind = "pose"`` also takes a list of keys: meshes moved together.
    ``kind = "camera"``: a glob over sensor ids (default ``*``: every photo)."""
    kind: SkipValidation[str] = "auto"
    """``auto``: a value, bitmap texture or environment map, from the key;
    ``pose``: a rigid transform of meshes (``<shape>.vertex_positions``) or an
    analytic shape (``<shape>.to_world``), e.g. an object or an area light;
    ``shape``: free vertex positions with large-steps preconditioning;
    ``camera``: each matching photo's camera pose (rotation and translation),
    refined by moving the scene relative to the camera (see invpbr.estimates.cameras)."""
    scale: Bool = False
    """``kind = "pose"``: also estimate a uniform scale."""
    adam: AdamMoments = "auto"
    """``kind = "pose"`` and ``"camera"``: what shares Adam's second moment (which
    sets each component's step size): ``component`` (plain Adam: every component
    steps by about the learning rate whatever its gradient's size), ``group``
    (a pose's or each camera's translation, and its rotation, each one step size),
    ``motion`` (a pose's or each camera's six components one step size: a
    component's step is its gradient's share: less drift of a weakly seen rotation,
    slower to turn one that starts far off), ``hybrid`` (``motion`` while the loss
    compares blurred images, the first half of the run; plain Adam after: no walk
    of a rotation the blurred images hardly see, full-sized steps once they are
    sharp). ``auto``: ``component`` (measurements: BENCHMARKS.md, issue 13)."""
    average: Annotated[float, Strict(), Field(ge=0, lt=1)] | None = None
    """``kind = "pose"`` and ``"camera"``: return the mean of the iterates of the last
    this fraction of the run (Polyak-Ruppert iterate averaging; rotations by their
    chordal mean) instead of the last step's: a rotation that one step's noisy
    gradient hardly constrains jitters around its answer, and the mean of the jitter
    lies closer to it than its last state. 0: the last step's. Default (unset):
    ``AVERAGE`` in :mod:`invpbr.optimization.watch` (measurements: BENCHMARKS.md,
    issue 13). The best-state watch still puts back a run (a camera) whose loss ends
    clearly above its minimum; result.json's ``averaged`` says what was returned."""
    polish: NonNegativeInt | None = None
    """``kind = "pose"`` and ``"camera"``: Levenberg-Marquardt iterations (at most) after the
    steps, on Jacobians measured by finite differences of renders with common random
    numbers (:mod:`invpbr.optimization.polish`): the steps' Monte Carlo gradients
    leave a motion a degree or more off, the polish takes it to what the photos
    determine, and result.json's ``polished`` says how well that is (a standard
    deviation per camera or pose). 0: none. Default (unset): ``POLISH`` in
    :mod:`invpbr.optimization.polish` (measurements: BENCHMARKS.md, issue 13)."""
    polish_spp: PositiveInt | None = None
    """Samples per pixel of the polish's renders (default: 256 at 48x48 or smaller, fewer
    per pixel on larger images, the same samples per view, at least 16; ``POLISH_SAMPLES``
    there). The renders that compare a step's loss take 4 times these, up to 256
    (``COMPARE_SAMPLES``; never fewer than these)."""
    polish_blur: NonNegative | None = None
    """Gaussian blur (pixels) of the residual images the polish's steps fit (default
    ``POLISH_BLUR`` there: 1 for cameras, 0 for poses)."""
    lambda_: NonNegative = 19.0
    """``kind = "shape"``: large-steps smoothness lambda (TOML: ``lambda``);
    larger is smoother and slower to reach detail."""
    remesh: NonNegativeInt = 0
    """``kind = "shape"``: isotropic remeshings, evenly spaced over the run;
    each targets 0.75x the mesh's mean edge length (needs gpytoolbox)."""
    bounds: SkipValidation[tuple[float, float] | None] = None
    """Values are clipped into ``[lo, hi]`` after every step."""
    lr: NonNegative | None = None
    """Learning rate of this parameter (default: ``[optimize] lr``)."""
    resolution: SkipValidation[int | list[int] | None] = None
    """Textures and environment maps: resolution per coarse-to-fine stage,
    e.g. ``[16, 32, 64]`` (square textures; envmap heights, width = 2 x
    height); the stages split the iterations evenly. Default: a texture's
    resolution in scene.xml, one stage; for an envmap, 1/4, 1/2 and all of it."""
    tv: NonNegative | None = None
    """Textures and environment maps: weight of the total-variation
    regularizer (on log radiance for envmaps). Default: 0 for textures,
    ``ENVMAP_TV`` for envmaps."""
    space: Space = "auto"
    """``linear``, ``log`` (optimize the logarithm: positive values, steps
    relative to the value), or ``auto``: log for emitters' radiance,
    intensity, scale and envmaps, linear otherwise."""
    model: EnvmapModel = "texels"
    """Environment maps only: ``texels`` (every texel), ``sh`` (spherical
    harmonics up to ``sh_order``) or ``sun_sky`` (a sun lobe with direction
    and colour plus a sky gradient) — low-order models for few views."""
    sh_order: NonNegativeInt = 2
    """Environment maps with ``model = "sh"``: highest band (2: 9 coefficients)."""
    white_balance: NonNegative = 0.0
    """Environment maps: weight of a prior pulling the map's mean colour to
    grey (log-chromaticity), for when albedo and light colour are both unknown."""
    gradient: Gradient = "auto"
    """``ad`` (Mitsuba's automatic differentiation), ``fd`` (central finite
    differences of the loss, for scalars and colours), or ``auto``: ``fd``
    where Mitsuba 3.9.1's gradient of the parameter is known to be biased."""
    options: SkipValidation[dict[str, Any]] = field(default_factory=dict)
    """Options of a kind registered outside invpbr (its own table keys)."""


@dataclass
class OptimizeConfig:
    iterations: NonNegativeInt = 200
    """Optimization steps."""
    lr: NonNegative = 0.02
    """Adam learning rate of every parameter without its own ``lr``."""
    lr_decay: Annotated[float, Strict(), Field(gt=0, le=1)] | None = None
    """Learning rates at the last step, as a fraction of their start: constant
    for the first half of the run, then shrinking geometrically (1: constant
    throughout). Below 1, an estimate that wanders with Monte Carlo noise
    around the answer settles. Not set: 0.1 when cameras, poses or free shapes
    are estimated or a ``[field]`` is fitted, else 1."""
    loss: Loss = "l1"
    """Image loss: ``l1``, ``l2``, ``relative_l2`` or ``cauchy`` (robust:
    ``log(1 + (r / loss_scale)^2)``, pixels far off the render, such as
    people or cars that are not in the model, weigh little)."""
    loss_scale: Annotated[float, Strict(), Field(gt=0)] = 0.05
    """``loss = "cauchy"``: the residual (linear units) at which a pixel's
    weight has halved."""
    views_per_step: NonNegativeInt = 0
    """Views rendered per step (a random subset); 0 means all views."""
    seed: NonNegativeInt = 0
    """Seed of the renders' samplers and of the view subsets."""
    batch: Bool = True
    """Render all views of a step with one call (Mitsuba's ``batch`` sensor:
    the views side by side in one image, one kernel), where the views' films
    match and the integrator is not projective (times in BENCHMARKS.md).
    Same expected images; other random numbers.
    With ``views_per_step``, perspective views are rendered by that many
    sensors of one batch, aimed anew at each step's views (and a frozen step
    is recorded once for all subsets)."""
    precision: Precision = "single"
    """``single`` or ``half``: estimated bitmap textures (and every other bitmap
    of the scene) stored in float16 in the scene, their latents too, with
    Dr.Jit's GradScaler against underflowing gradients. Adam keeps float32
    moments (its ``promote_fp16``: float16 second moments of unscaled
    gradients underflow). Envmaps and values stay float32."""
    freeze: Bool = True
    """Record each step's kernels once with ``dr.freeze`` and replay them (same
    estimates to float rounding; times in BENCHMARKS.md), where the problem
    allows it: one recording per coarse-to-fine stage, one for all view
    subsets of perspective views. Elsewhere steps are traced, silently: with
    projective integrators, finite-difference gradients, per-photo gains,
    camera refinement, half precision, and view subsets of other sensors. A
    replay that Dr.Jit refuses falls back to tracing with a warning."""
    max_skipped_steps: PositiveInt = 10
    """A step whose loss or gradient is not finite is skipped (estimates and
    Adam's state unchanged, counted in result.json's ``skipped_steps``); this
    many skipped in a row end the run as ``diverged`` with the last finite
    estimates."""
    checkpoint_every: NonNegativeInt = 0
    """Write a checkpoint (``OUT/checkpoint/``, for ``invpbr run --resume``)
    every this many steps (0: only by ``checkpoint_seconds``)."""
    deterministic: Bool | None = None
    """Take the steps (and the Gauss-Newton polish of poses and cameras) with one
    Dr.Jit thread, so that a run (and a run resumed from a checkpoint) gives
    bit-identical estimates on the CPU; with several threads the backward pass's atomic
    additions sum in any order (differences of about 1e-8). Not set: on where an
    estimate's runs are chaotic (poses and cameras: from the same inputs two runs
    ended 1.1 and 4.5 degrees off, the 1e-8 having grown into other Monte Carlo paths;
    ``Estimate.deterministic_by_default``), off otherwise (those differences stay
    1e-7). Slower by up to the number of cores; the renders before and after the steps
    keep every thread (Mitsuba 3.9.1's EXR reading and writing needs two)."""
    checkpoint_seconds: NonNegative = 60.0
    """Write a checkpoint when this many seconds passed since the last one
    (0: only by ``checkpoint_every``); checkpoints are also written when a run
    is interrupted (SIGINT, SIGTERM) or fails."""


@dataclass
class PhotosConfig:
    resize: Bool = False
    """Resize photos whose size differs from their sensor's film (with a
    warning) instead of stopping with an error."""
    saturation: NonNegative = 0.98
    """Channels of PNG/JPEG photos at or above this linear value are clipped by
    the camera (0: none are): see ``clipped``."""
    clipped: Clipped = "auto"
    """How the loss of scene estimates counts pixels with a clipped channel:
    ``bound`` says the scene is at least as bright as the photo there, in the
    clipped channels (in a JPEG, whose compression mixes the channels, in every
    channel of the pixel): a render darker there is penalized, a brighter one is
    not; ``mask`` leaves them out (also what radiance fields and reconstructions
    do); ``auto``: ``bound`` where cameras are refined, ``mask`` where a pose is
    estimated (against single noisy renders the bounds push it toward brightening
    what is clipped: measured worse for lights and objects) and where neither is
    (not measured: as before). Leaving them out keeps only
    the pixels whose noise stayed below the clip, darker than the truth on
    average: cameras in bright noisy regions drift toward darker views; where
    they are left out, the Gauss-Newton polish of a light's pose also leaves
    out the brightest pixels of a render of its own, down to where the photos
    hardly clip (result.json ``polished.<key>.near_clip``; not for an object's
    pose, whose silhouette against a bright floor is among them); with ``auto``
    the polish of other motions (an object's pose) counts the clipped channels
    as censored: the scene plus the photos' noise reached the clip there
    (result.json ``polished.<key>.censored``)."""
    gain: Gain = "none"
    """Per-photo gain estimated with the scene, for photos whose exposure and
    white balance differ: ``none``, ``exposure`` (one factor per photo) or
    ``rgb`` (one factor per photo and colour channel). A render is multiplied
    by its photo's gain before it is compared with the photo."""
    gain_reference: Text = "mean"
    """The gauge of the gains (a common factor of all gains is the same as
    brighter lights): ``mean`` holds the geometric mean over the fitted photos
    at 1, a photo id holds that photo's gain at 1."""
    gain_lr: NonNegative = 0.02
    """Adam learning rate of the gains' logarithms."""


@dataclass
class CamerasConfig:
    file: SkipValidation[str] = ""
    """A camera file, relative to the scene folder, whose frames replace the
    sensors of scene.xml: a NeRF / instant-ngp ``transforms.json``, a COLMAP
    model folder (cameras/images .txt or .bin) or an LLFF ``poses_bounds.npy``.
    Each frame becomes a sensor whose id is its photo's file stem; photos are
    found by the frames' file paths. Empty: the sensors of scene.xml."""
    resolution: SkipValidation[list[int] | None] = None
    """Working resolution ``[width, height]``: photos (filtered) and
    intrinsics are rescaled together. Default: the camera file's."""
    truth: SkipValidation[str] = ""
    """The true cameras (a second camera file, same ids), for errors of
    refined cameras and of the gains (frames' ``"gain": [r, g, b]``).
    Default: the sensors of truth.xml, when it has the same ids."""
    undistort: Bool = True
    """Undistort photos of cameras with lens distortion (OpenCV, the
    ``photos`` extra); false: refuse them."""


@dataclass
class ReportConfig:
    gradients: Bool = True
    """Gradient images at the start and at the end of a run, in the result
    folder's gradients/ and report.html: dLoss/dpixel, and for each estimate
    dI/dθ and its per-pixel contribution (forward mode) or, for textures and
    environment maps, the gradient as an image. Costs a reverse and a forward
    render per direction of each estimate (see BENCHMARKS.md)."""
    gradient_views: PositiveInt = 1
    """How many fitted views get gradient images (the first ones)."""
    gradient_spp: PositiveInt = 16
    """Samples per pixel of the gradient images' renders."""


FieldModel = Literal["grid", "hash"]
#: ``[optimize] iterations`` of a problem with a ``[field]`` that does not set it
#: (a step fits ``batch_rays`` pixels, not whole views); its ``loss`` is then ``l2``.
FIELD_ITERATIONS = 600
#: ``[optimize] lr_decay`` of a problem with a ``[field]`` that does not set it: the
#: grid's values settle instead of wandering with each step's random rays
#: (+0.5 dB held-out on scenes/field_object, BENCHMARKS.md).
FIELD_LR_DECAY = 0.1


@dataclass
class FieldConfig:
    """``[field]``: fit a radiance field (density and view-dependent colour in
    a box) to the photos; no scene.xml needed (see invpbr.estimates.fields)."""

    enabled: Bool = False
    """Set by the presence of a ``[field]`` table (not a key of it)."""
    model: FieldModel = "grid"
    """``grid``: a dense grid of density and spherical-harmonic colour, coarse to
    fine; ``hash``: a multiresolution hash grid with a small MLP."""
    resolution: SkipValidation[int | list[int]] = field(default_factory=lambda: [32, 64, 96])
    """Grid cells along the box's longest side, one entry per coarse-to-fine
    stage (the iterations split evenly)."""
    sh_degree: Annotated[int, Strict(), Field(ge=0, le=2)] = 1
    """Degree of the spherical harmonics of the colour (0: no view dependence).
    1 by default: with tens of photos, degree 2 lets the empty part of the box
    imitate each photo's background (floaters seen from new viewpoints), and
    costs twice the values (BENCHMARKS.md: -1 to -1.5 dB held-out)."""
    bounds: SkipValidation[list[list[float]] | None] = None
    """``[[xmin, ymin, zmin], [xmax, ymax, zmax]]``; default: from the cameras
    (the region every fitted camera sees, and the masks where present)."""
    background: SkipValidation[str | list[float]] = "envmap"
    """``learned`` (one colour), ``envmap`` (a learned colour per direction),
    ``white``, ``black`` or ``[r, g, b]`` (linear)."""
    batch_rays: PositiveInt = 4096
    """Random rays (pixels of all fitted photos) per step."""
    samples: Annotated[float, Strict(), Field(gt=0)] = 1.0
    """Samples per grid cell along a ray (of the current stage's cells)."""
    lr: NonNegative = 0.1
    """Adam learning rate of the field's latents."""
    occupancy: Bool = True
    """Skip empty space with an occupancy grid (NerfAcc), and stop rays whose
    transmittance is negligible."""
    occupancy_resolution: PositiveInt = 64
    """Cells of the occupancy grid along the box's longest side."""
    occupancy_threshold: NonNegative = 0.01
    """A cell is occupied while the opacity of one sample step in it (from the
    moving average of its density) is above this."""
    occupancy_every: PositiveInt = 16
    """Steps between occupancy-grid updates."""
    occupancy_warmup: NonNegativeInt = 32
    """Steps before the occupancy grid is first used (everything occupied)."""
    occupancy_decay: Annotated[float, Strict(), Field(ge=0, lt=1)] = 0.95
    """Decay of the moving average of each cell's density at an update."""
    tv: NonNegative = 1e-4
    """Weight of the total variation of density and colour (grid model)."""
    background_tv: NonNegative = 0.0
    """Weight of the total variation of the learned background (``envmap``;
    nearly L1 between neighbouring texels): directions that the content hides
    from most photos take their neighbours' colour, not the content's. 0.05:
    scenes/field_object 28.55 -> 30.81 dB held-out; off by default (it cost the
    fox 0.7 dB and the margins of the time and appearance tests: BENCHMARKS.md)."""
    leave_out_outvoted: Bool = True
    """Before each coarse-to-fine stage, leave out of the rest of the fit the
    fitted photos that the others outvote on the learned background
    (``envmap``) over more than a third of their frame: a near occluder
    outside the box that fills one photo's frame otherwise darkens those
    directions, and the object seen from near that photo, for every viewpoint
    (see invpbr.estimates.field_background; the photos left out are named in
    result.json's notes)."""
    sparsity: NonNegative = 1e-4
    """Weight of a sparsity prior on the sampled opacities (against floaters)."""
    distortion: NonNegative = 1e-3
    """Weight of Mip-NeRF 360's distortion loss on each ray's weights."""
    spp: PositiveInt = 4
    """Rays per pixel of the saved renders and held-out evaluation."""
    appearance: Literal["none", "affine", "embedding"] = "none"
    """Per-photo appearance (NeRF-W): ``affine``: a colour transform per fitted
    photo (3 x 3 matrix and offset, relative to their mean) on the rendered
    colour; renders of views are at the neutral appearance (the mean);
    ``embedding`` (a code feeding the hash model's MLP) is refused: not available."""
    transient: Bool = False
    """Transient occluders (passers-by): a coarse RGBA layer per fitted photo
    composited over its render, with an L1 prior on its opacity (NeRF-W's
    transient head, in image space); renders of views leave it out."""
    transient_weight: NonNegative = 0.01
    """Weight of the transient layer's L1 opacity prior (the loss a pixel
    left to the layer costs)."""
    time: Bool = False
    """A field that varies in time: each frame of transforms.json carries a
    ``time`` in [0, 1] (D-NeRF); one canonical grid and a coarse displacement
    grid at each of ``time_slices`` moments, linear in time (``time_deform``;
    or a static grid plus an offset grid per moment, ``time_deform = 0``; see
    invpbr.estimates.field_time)."""
    time_slices: Annotated[int, Strict(), Field(ge=2, le=64)] = 4
    """Moments of a field in time (evenly over [0, 1])."""
    time_tv: NonNegative = 1e-5
    """Weight of the squared difference between neighbouring moments' offsets
    (smoothness in time) and of the offsets' squares (with ``tv`` > 0)."""
    time_deform: NonNegativeInt = 3
    """Cells along the box's longest side of a coarse displacement grid per
    moment that moves each point into one canonical grid before its lookup
    (D-NeRF's deformation field), instead of the moments' offsets; 0: the
    static grid plus the offsets."""
    time_deform_tv: NonNegative = 0.1
    """Weight of the squared second difference in time of the displacements
    (smoothness in time: steady motion costs nothing; with 3 or more moments)."""
    multiscale: Bool = False
    """Anti-aliased fitting and rendering (Mip-NeRF): each sample carries the
    footprint of its pixel (a cone: the pixel's width at unit distance, from
    its photo's size and field of view, times the distance) and looks up the
    grid's mip levels (2x box downsamplings of the fitted grid) at that width
    (Tri-MipRF / PyNeRF); photos may then have different sizes, and a field
    renders at any resolution without aliasing (``invpbr view --width``).
    With ``model = "hash"``: the hash levels finer than the footprint are
    down-weighted (Zip-NeRF) instead (see invpbr.estimates.field_multiscale)."""
Background = Literal["envmap", "ignore"]


@dataclass
class ReconstructConfig:
    """``[reconstruct]``: an object from photos, masks and cameras alone
    (see :mod:`invpbr.reconstruct`); every key has a default."""

    hull_resolution: PositiveInt = 128
    """Voxels along the longest side of the visual hull's grid."""
    faces: PositiveInt = 6000
    """Triangles of the mesh (the hull's remeshing and every later remeshing)."""
    iterations: NonNegativeInt = 240
    """Steps of the joint optimization of shape, material and lighting (0: the hull
    with its fitted material and lighting only)."""
    material_iterations: NonNegativeInt = 60
    """Steps fitting material and lighting alone on the hull, before the joint ones."""
    polish_iterations: NonNegativeInt = 40
    """Steps fitting the material alone (the light as the joint steps left it) on the
    final mesh, after the joint ones (the last remeshing carried the material over
    by nearest vertex)."""
    views_per_step: PositiveInt = 4
    """Photos rendered per joint step (a random subset)."""
    spp: PositiveInt = 8
    """Samples per pixel of each render in a step."""
    max_depth: Annotated[int, Strict(), Field(ge=2)] = 2
    """Longest light path (2: direct lighting from the environment map)."""
    lambda_: NonNegative = 25.0
    """Large-steps smoothness of the shape (``mi.ad.LargeSteps``; TOML: ``lambda``)."""
    lr_shape: NonNegative = 0.002
    """Adam step of the shape's latent, as a fraction of the object's bounding-box diagonal."""
    lr_material: NonNegative = 0.03
    """Adam step of the per-vertex base colour and roughness."""
    lr_light: NonNegative = 0.05
    """Adam step of the environment map's log radiance."""
    remesh: NonNegativeInt = 2
    """Isotropic remeshings during the joint optimization (evenly spaced)."""
    envmap_height: PositiveInt = 64
    """Rows of the estimated environment map (width: twice as many)."""
    background: Background = "envmap"
    """``envmap``: the photos' background is the environment seen from afar and is
    fitted with it; ``ignore``: only the masked object is fitted."""
    mask_weight: NonNegative = 1.0
    """Weight of the silhouette loss (render coverage against the masks)."""
    white_light: NonNegative = 0.02
    """Weight of the prior pulling the environment map's mean colour to grey (the
    albedo/light-colour ambiguity)."""
    texture_resolution: PositiveInt = 512
    """Side of the baked base-colour and roughness textures (UV atlas by xatlas)."""
    loss_scale: Annotated[float, Strict(), Field(gt=0)] = 0.1
    """Residual (in tone-mapped units) at which the robust photometric loss
    weighs a pixel half (Cauchy)."""


@dataclass
class ProblemConfig:
    render: RenderConfig = field(default_factory=RenderConfig)
    estimate: list[EstimateConfig] = field(default_factory=list)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    photos: PhotosConfig = field(default_factory=PhotosConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    cameras: CamerasConfig = field(default_factory=CamerasConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    field: FieldConfig = field(default_factory=FieldConfig)
    reconstruct: ReconstructConfig | None = None
    """``[reconstruct]``: present (even empty) to reconstruct an object; None otherwise."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """An invpbr.toml that cannot be used; the message names file and key."""


#: The tables of invpbr.toml and the dataclass each is read into.
TABLES: dict[str, type] = {"render": RenderConfig, "estimate": EstimateConfig,
                           "optimize": OptimizeConfig, "photos": PhotosConfig,
                           "evaluate": EvaluateConfig, "cameras": CamerasConfig,
                           "report": ReportConfig, "field": FieldConfig,
                           "reconstruct": ReconstructConfig}

for _cls in TABLES.values():
    _cls.__pydantic_config__ = STRICT
_ADAPTERS: dict[type, TypeAdapter] = {}


def _names(cls: type) -> list[str]:
    """The TOML names of a table's keys (``lambda`` for ``lambda_``)."""
    return [f.name.removesuffix("_") for f in dataclasses.fields(cls) if f.name != "options"]


def _close(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _interval(cls: type, name: str) -> str | None:
    """``(0, 1]`` for a field bounded on both sides, else None."""
    import typing

    hint = typing.get_type_hints(cls, include_extras=True).get(name)
    bounds = {}
    for meta in getattr(hint, "__metadata__", ()):
        for item in getattr(meta, "metadata", [meta]):
            for attr in ("gt", "ge", "lt", "le"):
                if getattr(item, attr, None) is not None:
                    bounds[attr] = getattr(item, attr)
    lo = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    hi = (bounds["lt"], ")") if "lt" in bounds else (bounds["le"], "]") if "le" in bounds else None
    if lo is None or hi is None:
        return None
    return f"{lo[0]}{lo[1]:g}, {hi[0]:g}{hi[1]}"


def _message(error: dict, cls: type, where: str, table: dict) -> str:
    """One pydantic error as invpbr says it: the key, what was expected, what was found."""
    loc = error["loc"]
    key = str(loc[0]).removesuffix("_") if loc else ""
    name = f"{where}.{key}"
    value = table.get(loc[0], error.get("input")) if loc else error.get("input")
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"unknown key {name}; expected one of {', '.join(_names(cls))}{_close(key, _names(cls))}"
    if cls is EvaluateConfig:
        return f"{name} must be a list of strings, found {value!r}"
    if kind.startswith("int_") or kind == "int_type":
        return f"{name} must be an integer, found {value!r}"
    if kind.startswith("float_") or kind == "finite_number":
        return f"{name} must be a finite number, found {value!r}"
    if kind.startswith("bool_"):
        return f"{name} must be true or false, found {value!r}"
    if kind == "literal_error":
        choices = [c.strip(" '") for c in ctx.get("expected", "").replace(" or ", ", ").split(",")]
        return f"{name} = {value!r}; expected one of {', '.join(choices)}"
    interval = _interval(cls, loc[0]) if loc else None
    if interval and any(b in ctx for b in ("ge", "gt", "le", "lt")):
        return f"{name} must be in {interval}, found {value!r}"
    for bound, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if bound in ctx:
            return f"{name} must be {sign} {ctx[bound]:g}, found {value!r}"
    if kind in ("string_type", "string_too_short"):
        return f"{name} must be a non-empty string, found {value!r}"
    return f"{name}: {error['msg']}, found {value!r}"


def _read_table(where: str, table: Any, cls: type, source: str, *, key_where: str | None = None):
    """``table`` validated into ``cls`` (its unknown keys refused first, with
    close names suggested); errors name ``source`` and ``key_where``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] must be a table, found {type(table).__name__}")
    if cls is ReconstructConfig and "lambda" in table:
        table = {("lambda_" if k == "lambda" else k): v for k, v in table.items()}
    for key in table:
        if key not in cls.__dataclass_fields__ or key == "options":
            toml_key = "lambda" if key == "lambda_" else key
            raise ConfigError(f"{source}: unknown key {where}.{toml_key}; expected one of "
                              f"{', '.join(_names(cls))}{_close(toml_key, _names(cls))}")
    adapter = _ADAPTERS.setdefault(cls, TypeAdapter(cls))
    try:
        return adapter.validate_python(table)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_message(e.errors()[0], cls, key_where or where, table)}") \
            from None


def _check_spp(spp: Any, source: str) -> None:
    if isinstance(spp, list):
        if not spp:
            raise ConfigError(f"{source}: render.spp must be a positive integer or a non-empty "
                              "list of them")
        for i, v in enumerate(spp):
            _integer(v, f"render.spp[{i}]", source)
    else:
        _integer(spp, "render.spp", source)


def _integer(value: Any, name: str, source: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{source}: {name} must be an integer, found {value!r}")
    if value < minimum:
        raise ConfigError(f"{source}: {name} must be >= {minimum}, found {value!r}")


def _check_cameras(cameras: CamerasConfig, source: str) -> None:
    for name in ("file", "truth"):
        if not isinstance(getattr(cameras, name), str):
            raise ConfigError(f"{source}: cameras.{name} must be a file name, found "
                              f"{getattr(cameras, name)!r}")
    if cameras.truth and not cameras.file:
        raise ConfigError(f"{source}: cameras.truth needs cameras.file (the cameras to refine)")
    res = cameras.resolution
    if res is not None:
        if (not isinstance(res, list) or len(res) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in res)):
            raise ConfigError(f"{source}: cameras.resolution must be [width, height] in pixels, "
                              f"found {res!r}")
        if not cameras.file:
            raise ConfigError(f"{source}: cameras.resolution needs cameras.file (scene.xml's "
                              "sensors set their own film size)")


def _check_field(f: FieldConfig, source: str) -> None:
    """The ``[field]`` keys pydantic does not check by type alone."""
    res = [f.resolution] if isinstance(f.resolution, int) and not isinstance(f.resolution, bool) \
        else f.resolution
    if (not isinstance(res, list) or not res
            or not all(isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 512
                       for v in res)):
        raise ConfigError(f"{source}: field.resolution must be an integer in [2, 512] or a list "
                          f"of them, found {f.resolution!r}")
    f.resolution = res
    b = f.bounds
    if b is not None:
        ok = (isinstance(b, list) and len(b) == 2 and all(
            isinstance(c, list) and len(c) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in c) for c in b))
        if not ok or not all(lo < hi for lo, hi in zip(*b)):
            raise ConfigError(f"{source}: field.bounds must be [[xmin, ymin, zmin], [xmax, ymax, "
                              f"zmax]] with min < max, found {b!r}")
        f.bounds = [[float(v) for v in c] for c in b]
    bg = f.background
    if isinstance(bg, list):
        if len(bg) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                   and v >= 0 for v in bg):
            raise ConfigError(f"{source}: field.background must be learned, envmap, white, "
                              f"black or [r, g, b] (linear, >= 0), found {bg!r}")
    elif bg not in ("learned", "envmap", "white", "black"):
        raise ConfigError(f"{source}: field.background = {bg!r}; expected one of learned, "
                          "envmap, white, black or [r, g, b]")
    if f.time and f.model != "grid":
        raise ConfigError(f"{source}: field.time = true needs model = \"grid\" (a field in time "
                          "is a deformed dense grid); the hash model is static")
    if f.appearance == "embedding":
        raise ConfigError(f"{source}: field.appearance = \"embedding\" (a code feeding an MLP) "
                          "is not available in this version; appearance = \"affine\" (a colour "
                          "transform per photo) works with the grid and hash models")


def _estimate_table(i: int, t: Any, source: str) -> EstimateConfig:
    """One ``[[estimate]]`` table: its kind (and a registered kind's own
    options), key, bounds and resolution checked by hand, the rest by type."""
    if isinstance(t, dict) and "lambda" in t:
        t = {("lambda_" if k == "lambda" else k): v for k, v in t.items()}
    kind = t.get("kind", "auto") if isinstance(t, dict) else "auto"
    if isinstance(kind, str) and kind not in ESTIMATE_KINDS:
        raise ConfigError(f"{source}: estimate[{i}] (key {t.get('key')!r}).kind = {kind!r}; "
                          f"expected one of {', '.join(ESTIMATE_KINDS)} (a kind defined "
                          "outside invpbr is loaded with --plugin)")
    own = KIND_OPTIONS.get(kind, {}) if isinstance(kind, str) else {}
    options = {**own, **{k: v for k, v in t.items() if k in own}} if own else {}
    if isinstance(t, dict):
        t = {k: v for k, v in t.items() if k not in own}
    where = f"estimate[{i}]"
    if isinstance(t, dict) and kind == "camera":
        t = {"key": "*", **t}
    key = t.get("key") if isinstance(t, dict) else None
    if isinstance(key, list) and kind == "pose":
        if not key or not all(isinstance(k, str) and k for k in key):
            raise ConfigError(f"{source}: {where}.key must be a list of mi.traverse keys, "
                              f"found {key!r}")
    elif isinstance(t, dict) and (not isinstance(key, str) or not key):
        raise ConfigError(f"{source}: {where}.key is missing; it must name a mi.traverse key"
                          + (" (a list of keys only with kind = \"pose\")"
                             if isinstance(key, list) else ""))
    e = _read_table(where, t, EstimateConfig, source, key_where=f"estimate[{i}] (key {key!r})")
    e.options = options
    where = f"estimate[{i}] (key {e.key!r})"
    if e.bounds is not None:
        b = e.bounds
        if (not isinstance(b, (list, tuple)) or len(b) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
            raise ConfigError(f"{source}: {where}.bounds must be [lo, hi], found {b!r}")
        if not b[0] < b[1]:
            raise ConfigError(f"{source}: {where}.bounds must have lo < hi, found {list(b)!r}")
        e.bounds = (float(b[0]), float(b[1]))
    if e.resolution is not None:
        res = [e.resolution] if isinstance(e.resolution, int) else e.resolution
        if (not isinstance(res, list) or not res
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in res)):
            raise ConfigError(f"{source}: {where}.resolution must be a positive integer or a list "
                              f"of them, found {e.resolution!r}")
        e.resolution = res
    if e.kind not in ("pose", "camera") and (e.polish is not None or e.polish_spp is not None
                                             or e.polish_blur is not None):
        raise ConfigError(f"{source}: {where}.polish, polish_spp and polish_blur apply to "
                          "kind = \"pose\" and \"camera\" only")
    if e.kind not in ("pose", "camera") and e.average is not None:
        raise ConfigError(f"{source}: {where}.average applies to kind = \"pose\" and "
                          "\"camera\" only")
    if e.kind != "pose" and e.scale:
        raise ConfigError(f"{source}: {where}.scale applies to kind = \"pose\" only")
    if e.kind != "shape" and (e.remesh or "lambda_" in t):
        raise ConfigError(f"{source}: {where}: lambda and remesh apply to kind = \"shape\" only")
    return e


def parse_config(data: dict[str, Any], *, source: str = "invpbr.toml") -> ProblemConfig:
    """Validate a parsed TOML document into a :class:`ProblemConfig`.

    Args:
        data: the document as from ``tomllib.load``.
        source: file name used in error messages.

    Raises:
        ConfigError: unknown tables or keys, wrong types or values.
    """
    for name in data:
        if name not in TABLES:
            raise ConfigError(f"{source}: unknown table [{name}]; expected "
                              f"{', '.join(sorted(TABLES))}{_close(name, list(TABLES))}")
    retired = (data.get("render") or {}).get("integrator") if isinstance(data.get("render"),
                                                                         dict) else None
    if isinstance(retired, str) and retired in RETIRED_INTEGRATORS:
        raise ConfigError(f"{source}: [render] integrator = {retired!r}: "
                          f"{RETIRED_INTEGRATORS[retired]}")
    read = {name: _read_table(name, data.get(name, {}), cls, source)
            for name, cls in TABLES.items() if name not in ("estimate", "reconstruct")}
    if "reconstruct" in data:
        read["reconstruct"] = _read_table("reconstruct", data["reconstruct"], ReconstructConfig,
                                          source)
    if "field" in data:
        if "enabled" in data["field"]:
            raise ConfigError(f"{source}: unknown key field.enabled; a [field] table enables "
                              "the radiance field")
        read["field"].enabled = True
        _check_field(read["field"], source)
        if "iterations" not in (data.get("optimize") or {}):
            read["optimize"].iterations = FIELD_ITERATIONS
        if "loss" not in (data.get("optimize") or {}):
            read["optimize"].loss = "l2"  # (the mean squared error: what PSNR measures)
        if "lr_decay" not in (data.get("optimize") or {}):
            read["optimize"].lr_decay = FIELD_LR_DECAY
    _check_spp(read["render"].spp, source)
    _check_cameras(read["cameras"], source)
    tables = data.get("estimate", [])
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list):
        raise ConfigError(f"{source}: [[estimate]] must be an array of tables")
    estimates = [_estimate_table(i, t, source) for i, t in enumerate(tables)]
    if sum(e.kind == "camera" for e in estimates) > 1:
        raise ConfigError(f"{source}: more than one [[estimate]] with kind = \"camera\"; use one "
                          "key glob over the sensor ids")
    return ProblemConfig(estimate=estimates, **read)


def config_schema() -> dict[str, Any]:
    """The JSON schema of invpbr.toml (for editors; ``invpbr schema``)."""
    schema = TypeAdapter(ProblemConfig).json_schema()
    schema["title"] = "invpbr.toml"
    estimate = schema["$defs"]["EstimateConfig"]["properties"]
    estimate.pop("options", None)  # a registered kind's own keys
    estimate["lambda"] = estimate.pop("lambda_")
    recon = schema["$defs"]["ReconstructConfig"]["properties"]
    recon["lambda"] = recon.pop("lambda_")
    return schema


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
