"""invpbr: physically based Monte Carlo inverse rendering on Mitsuba 3.

Typical use::

    import invpbr
    problem = invpbr.load_problem("scenes/cornell")
    result = invpbr.optimize(problem)
    invpbr.save_result(result, "out/cornell")

    # an object from photos, masks and cameras ([reconstruct] in invpbr.toml)
    problem = invpbr.load_problem("scenes/object_capture")
    rec = invpbr.reconstruct_object(problem)
    invpbr.save_reconstruction(rec, "out/object_capture", [v.camera for v in problem.views])

Importing invpbr first points Dr.Jit at a usable LLVM (see
:mod:`invpbr.backend`); it imports neither Dr.Jit nor Mitsuba itself.

The package follows the data flow, each layer importing only from the ones
before it: ``backend`` and ``config``; ``capture`` (photos, masks, camera
files, the capture simulator's effects); ``estimates`` (one module per kind
of unknown, behind one protocol); ``problem`` (a scene folder -> Problem);
``render`` (integrators, batching, invpbr's own integrators, photos of
synthetic scenes); ``results`` (Result, metrics, the result folder);
``optimize`` (the loop, step strategies, losses, gradient checks); ``run``
(command line, batches). ``invpbr.testing`` holds scene generators and
discontinuity cases for tests and benchmarks; the library never imports it.
"""

from . import backend as _backend

try:
    _backend.configure_llvm()
except _backend.LLVMError:
    # Raised again, with the same message, by init_backend() before Dr.Jit is
    # imported, so that `invpbr --help` and config checks still work.
    pass

from .backend import LLVMError, init_backend  # noqa: E402
from .config import ConfigError, ProblemConfig, load_config  # noqa: E402
from .optimization.loop import StepInfo, optimize  # noqa: E402
from .problem.folder import Problem, View, check_folder, load_problem  # noqa: E402
from .problem.scene import load_scene  # noqa: E402
from .render.photos import render_photos, simulate_capture  # noqa: E402
from .results.result import Result, save_result  # noqa: E402
from .optimization.gradcheck import check_gradients  # noqa: E402
from .reconstruct.pipeline import reconstruct as reconstruct_object  # noqa: E402
from .reconstruct.output import save_reconstruction  # noqa: E402
from . import notebook  # noqa: E402  (invpbr.notebook.live(problem): a Jupyter live figure)

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "LLVMError", "Problem", "ProblemConfig", "Result", "StepInfo", "View",
    "check_folder", "check_gradients", "init_backend", "load_config", "load_problem",
    "load_scene", "optimize", "reconstruct_object", "render_photos", "save_reconstruction",
    "save_result", "simulate_capture",
]
