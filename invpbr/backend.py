"""Backend: a usable LLVM for Dr.Jit, the Mitsuba variant, thread count.

Dr.Jit loads a shared LLVM library when it is imported. With LLVM 14 or 15
(Debian 12's packages) the first real kernel aborts the whole process
("LLVM ERROR: Cannot select ... fminimum"), which Python cannot catch. This
module therefore runs *before* Dr.Jit is imported (``import invpbr`` calls
:func:`configure_llvm`): it finds a known-good libLLVM, points
``DRJIT_LIBLLVM_PATH`` at it, and raises :class:`LLVMError` with what to do when
none is found. Nothing here imports Dr.Jit or Mitsuba at module level.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import sys
from pathlib import Path

#: Oldest LLVM major version that Dr.Jit 1.5's llvm backend runs correctly on.
#: 14 and 15 abort on ``fminimum``; 19 and 23 were checked on this stack.
MIN_LLVM_MAJOR = 16

_FIX = (
    "Install a supported LLVM (>= {min}) and try again, either\n"
    "  pip install karellen-llvm-core      (installed with invpbr; LLVM 23)\n"
    "or\n"
    "  apt-get install libllvm19           (Debian 12)\n"
    "or point DRJIT_LIBLLVM_PATH at a libLLVM.so of version >= {min}."
)


#: Whether Dr.Jit was imported before invpbr (then invpbr cannot choose its LLVM).
_DRJIT_IMPORTED_FIRST = "drjit" in sys.modules


class LLVMError(RuntimeError):
    """No LLVM library usable by Dr.Jit's CPU backend was found."""


def llvm_version(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """Version of the LLVM shared library at ``path``, or None if unknown.

    Parsed from the file name or its symlink target (``libLLVM-15.so.1``,
    ``libLLVM.so.23.1``, ``/usr/lib/llvm-19/lib/libLLVM.so``) where they say it;
    otherwise read through LLVM's C API (``LLVMGetVersion``, LLVM >= 16; a
    library without it is older). Loading a library with ``ctypes`` runs no
    Dr.Jit code, so a bad library is detected without the abort.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    for name in (path, os.path.realpath(path)):
        match = (re.search(r"libLLVM-(\d+)", name) or re.search(r"libLLVM\.so\.(\d+)", name)
                 or re.search(r"llvm-(\d+)/lib/libLLVM", name))
        if match:
            return (int(match.group(1)), 0, 0)
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    except OSError:
        return None
    get = getattr(lib, "LLVMGetVersion", None)
    if get is None:
        return (15, 0, 0)
    major, minor, patch = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
    get(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
    return (major.value, minor.value, patch.value)


def candidate_llvm_paths() -> list[str]:
    """Shared LLVM libraries on this machine, most preferred first.

    Order: the karellen-llvm-core wheel in this Python environment, then
    versioned system libraries, newest first.
    """
    prefixes = dict.fromkeys([sys.prefix, sys.base_prefix, sys.exec_prefix])
    found = []
    for prefix in prefixes:
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libLLVM.so.*")), reverse=True)
    system = []
    for pattern in (
        "/usr/lib/llvm-*/lib/libLLVM.so",
        "/usr/lib/llvm-*/lib/libLLVM-*.so",
        "/usr/lib/*-linux-gnu/libLLVM-*.so*",
        "/usr/lib/*-linux-gnu/libLLVM.so.*",
        "/usr/lib64/libLLVM*.so*",
        "/usr/local/lib/libLLVM*.so*",
        "/opt/homebrew/opt/llvm/lib/libLLVM.dylib",
        "/usr/local/opt/llvm/lib/libLLVM.dylib",
    ):
        system += glob.glob(pattern)

    def major(p: str) -> int:
        m = re.findall(r"(\d+)", os.path.basename(p)) or re.findall(r"llvm-(\d+)", p)
        return int(m[0]) if m else 0

    found += sorted(system, key=major, reverse=True)
    return list(dict.fromkeys(found))


def _loaded_llvm() -> str | None:
    """Path of the libLLVM already mapped into this process, if any (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if "libLLVM" in line:
                    return line.split()[-1]
    except OSError:
        pass
    return None


def configure_llvm() -> str | None:
    """Make sure Dr.Jit will load a usable LLVM; return the library's path.

    Must run before ``import drjit``. Respects a user's ``DRJIT_LIBLLVM_PATH``
    if it names a good library. If Dr.Jit was already imported with a bad
    LLVM, raises instead of letting the first render abort the process.

    Returns:
        The path of the LLVM library Dr.Jit uses, or None on platforms where
        it could not be determined (e.g. macOS with Dr.Jit already imported).

    Raises:
        LLVMError: no LLVM >= ``MIN_LLVM_MAJOR`` is available, the one in
            ``DRJIT_LIBLLVM_PATH`` is too old, or Dr.Jit already loaded a bad one.
    """
    fix = _FIX.format(min=MIN_LLVM_MAJOR)
    if "drjit" in sys.modules:
        loaded = _loaded_llvm()
        version = None if loaded is None else llvm_version(loaded)
        if version is None or version[0] >= MIN_LLVM_MAJOR:
            return loaded
        user = os.environ.get("DRJIT_LIBLLVM_PATH")
        if _DRJIT_IMPORTED_FIRST:
            cause = (f"Dr.Jit was imported before invpbr and loaded LLVM {version[0]} ({loaded}), "
                     "which aborts the process on the first render. Import invpbr before "
                     "drjit/mitsuba, or set DRJIT_LIBLLVM_PATH.")
        elif user:  # invpbr was imported first but kept the user's choice
            cause = (f"DRJIT_LIBLLVM_PATH={user!r} is LLVM {version[0]}; Dr.Jit aborts the "
                     "process with it (LLVM ERROR: Cannot select ... fminimum).")
        else:  # invpbr was imported first but found no usable LLVM
            cause = (f"No LLVM >= {MIN_LLVM_MAJOR} for Dr.Jit's CPU backend; Dr.Jit loaded "
                     f"LLVM {version[0]} ({loaded}), which aborts the process on the first render.")
        raise LLVMError(f"{cause}\n{fix}")

    user = os.environ.get("DRJIT_LIBLLVM_PATH")
    if user:
        if not Path(user).is_file():
            raise LLVMError(f"DRJIT_LIBLLVM_PATH={user!r}: no such file.\n{fix}")
        version = llvm_version(user)
        if version is None:
            raise LLVMError(f"DRJIT_LIBLLVM_PATH={user!r} cannot be loaded as a shared library.\n{fix}")
        if version[0] < MIN_LLVM_MAJOR:
            raise LLVMError(
                f"DRJIT_LIBLLVM_PATH={user!r} is LLVM {version[0]}; Dr.Jit aborts the "
                f"process with it (LLVM ERROR: Cannot select ... fminimum).\n{fix}")
        return user

    rejected = []
    for path in candidate_llvm_paths():
        version = llvm_version(path)
        if version is None:
            continue
        if version[0] >= MIN_LLVM_MAJOR:
            os.environ["DRJIT_LIBLLVM_PATH"] = path
            return path
        rejected.append(f"{path} (LLVM {version[0]})")
    found = "; found only: " + ", ".join(rejected) if rejected else ""
    if sys.platform == "darwin" or os.name == "nt":
        return None  # Dr.Jit finds its own LLVM there; nothing known to abort.
    raise LLVMError(f"No LLVM >= {MIN_LLVM_MAJOR} for Dr.Jit's CPU backend{found}.\n{fix}")


def init_backend(variant: str | None = None, *, threads: int | None = None) -> str:
    """Select the Mitsuba variant (once per process) and return its name.

    Args:
        variant: a Mitsuba variant name, or None for automatic:
            ``cuda_ad_rgb`` where a CUDA device works, else ``llvm_ad_rgb``.
            Also read from the environment variable ``INVPBR_VARIANT``.
        threads: Dr.Jit's CPU thread count (None: the environment variable
            ``INVPBR_THREADS`` where set, which ``invpbr batch`` sets for its
            jobs, else all cores).

    Raises:
        ValueError: the variant is unknown or unavailable in this Mitsuba build.
    """
    configure_llvm()
    import drjit as dr
    import mitsuba as mi

    variant = variant or os.environ.get("INVPBR_VARIANT")
    if variant is None:
        current = mi.variant()
        if current is not None and current.endswith("_ad_rgb"):
            variant = current
        elif dr.has_backend(dr.JitBackend.CUDA) and "cuda_ad_rgb" in mi.variants():
            variant = "cuda_ad_rgb"
        else:
            variant = "llvm_ad_rgb"
    if variant not in mi.variants():
        raise ValueError(
            f"init_backend(): variant {variant!r} is not available; "
            f"this Mitsuba build has {', '.join(mi.variants())}.")
    if "_ad_" not in variant:
        raise ValueError(f"init_backend(): variant {variant!r} has no automatic differentiation; "
                         "use one of the *_ad_rgb variants.")
    if variant.startswith("cuda") and not dr.has_backend(dr.JitBackend.CUDA):
        raise ValueError(f"init_backend(): variant {variant!r} needs a working CUDA GPU and "
                         "driver, and Dr.Jit found none; use llvm_ad_rgb (--backend cpu)")
    if mi.variant() != variant:
        mi.set_variant(variant)
    if threads is None and os.environ.get("INVPBR_THREADS", "").strip():
        try:
            threads = int(os.environ["INVPBR_THREADS"])
        except ValueError:
            raise ValueError(f"INVPBR_THREADS={os.environ['INVPBR_THREADS']!r}: expected a "
                             "whole number of threads") from None
    if threads is not None:
        # At least 2: with one thread in Dr.Jit's pool, Mitsuba 3.9.1's EXR reading
        # and writing (mi.Bitmap) waits forever (measured; cf. mitsuba3 issue #21).
        threads = max(2, int(threads))
        if dr.thread_count() != threads:
            dr.set_thread_count(threads)
    return variant
