"""invpbr: physically based Monte Carlo inverse rendering on Mitsuba 3.

Typical use::

    import invpbr
    problem = invpbr.load_problem("scenes/cornell")
    result = invpbr.optimize(problem)
    invpbr.save_result(result, "out/cornell")

Importing invpbr first points Dr.Jit at a usable LLVM (see
:mod:`invpbr.backend`); it imports neither Dr.Jit nor Mitsuba itself.
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
from .optimize import StepInfo, optimize  # noqa: E402
from .problem import Problem, View, check_folder, load_problem, load_scene  # noqa: E402
from .render import render_photos  # noqa: E402
from .result import Result, save_result  # noqa: E402
from .simulate import simulate_capture  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "LLVMError", "Problem", "ProblemConfig", "Result", "StepInfo", "View",
    "check_folder", "init_backend", "load_config", "load_problem", "load_scene", "optimize",
    "render_photos", "save_result", "simulate_capture",
]
