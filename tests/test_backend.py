"""The backend: a bad LLVM (Debian's 14/15, which abort the process on the
first kernel) must give a clear LLVMError, never the abort; version parsing;
variant selection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

import invpbr
from invpbr import backend
from invpbr.backend import MIN_LLVM_MAJOR, LLVMError, candidate_llvm_paths, init_backend, llvm_version


def bad_llvm() -> str | None:
    """An LLVM library on this machine that Dr.Jit cannot use (< 16), if any."""
    for path in candidate_llvm_paths():
        version = llvm_version(path)
        if version is not None and version[0] < MIN_LLVM_MAJOR:
            return path
    return None


BAD_LLVM = bad_llvm()
needs_bad_llvm = pytest.mark.skipif(BAD_LLVM is None, reason="no LLVM < 16 on this machine to test with")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("DRJIT_LIBLLVM_PATH", "INVPBR_VARIANT")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ,
                          timeout=120)


def assert_clean_failure(proc: subprocess.CompletedProcess) -> None:
    """Failed with a Python exception, not the LLVM abort."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.returncode not in (-signal.SIGABRT, 128 + signal.SIGABRT, 134)
    # LLVM's own abort prints "LLVM ERROR: Cannot select ..." at the start of a line
    assert not any(line.startswith("LLVM ERROR") for line in proc.stderr.splitlines()), proc.stderr
    assert "invpbr.backend.LLVMError: " in proc.stderr
    # the message says what to do
    assert "pip install karellen-llvm-core" in proc.stderr
    assert f"DRJIT_LIBLLVM_PATH at a libLLVM.so of version >= {MIN_LLVM_MAJOR}" in proc.stderr


@needs_bad_llvm
def test_bad_llvm_in_environment_gives_llvm_error():
    major = llvm_version(BAD_LLVM)[0]
    proc = run_python("import invpbr; invpbr.init_backend()", DRJIT_LIBLLVM_PATH=BAD_LLVM)
    assert_clean_failure(proc)
    assert f"DRJIT_LIBLLVM_PATH={BAD_LLVM!r} is LLVM {major}; Dr.Jit aborts the process" in proc.stderr


@needs_bad_llvm
def test_bad_llvm_blamed_when_mitsuba_is_imported_after_invpbr():
    # invpbr imported first, then mitsuba (which loads the bad LLVM) before
    # init_backend: the message names the real cause, not the import order.
    proc = run_python("import invpbr\nimport mitsuba\ninvpbr.init_backend()", DRJIT_LIBLLVM_PATH=BAD_LLVM)
    assert_clean_failure(proc)
    assert f"DRJIT_LIBLLVM_PATH={BAD_LLVM!r} is LLVM" in proc.stderr
    assert "imported before invpbr" not in proc.stderr


@needs_bad_llvm
@pytest.mark.parametrize("command", ["check", "run", "render"])
def test_bad_llvm_on_the_command_line(tmp_path, command):
    # `import invpbr` alone does not fail (so that --help and config checks
    # work); each command turns the LLVMError into a message and exit code 2.
    proc = run_python("import invpbr; print(invpbr.load_config)", DRJIT_LIBLLVM_PATH=BAD_LLVM)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "invpbr.toml").write_text("")
    (tmp_path / "truth.xml").write_text("<scene version='3.0.0'/>")
    proc = subprocess.run([sys.executable, "-m", "invpbr", command, str(tmp_path)], capture_output=True,
                          text=True, env=os.environ | {"DRJIT_LIBLLVM_PATH": BAD_LLVM}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"invpbr {command}: error: DRJIT_LIBLLVM_PATH={BAD_LLVM!r} is LLVM")
    assert not any(line.startswith("LLVM ERROR") for line in proc.stderr.splitlines())


@needs_bad_llvm
def test_drjit_imported_first_with_bad_llvm():
    major = llvm_version(BAD_LLVM)[0]
    proc = run_python("import drjit\nimport invpbr\ninvpbr.init_backend()", DRJIT_LIBLLVM_PATH=BAD_LLVM)
    assert_clean_failure(proc)
    assert f"Dr.Jit was imported before invpbr and loaded LLVM {major}" in proc.stderr
    assert "Import invpbr before drjit/mitsuba" in proc.stderr


def test_missing_llvm_in_environment(tmp_path):
    path = str(tmp_path / "libLLVM.so.99")
    proc = run_python("import invpbr; invpbr.init_backend()", DRJIT_LIBLLVM_PATH=path)
    assert_clean_failure(proc)
    assert f"DRJIT_LIBLLVM_PATH={path!r}: no such file" in proc.stderr


def test_unloadable_llvm_in_environment(tmp_path):
    path = tmp_path / "libLLVM.so"  # no version in its name, and not a library
    path.write_bytes(b"\x7fELF but not really")
    proc = run_python("import invpbr; invpbr.init_backend()", DRJIT_LIBLLVM_PATH=str(path))
    assert_clean_failure(proc)
    assert "cannot be loaded as a shared library" in proc.stderr


def test_good_llvm_is_chosen_in_this_process():
    path = backend.configure_llvm()
    if path is None:
        pytest.skip("Dr.Jit picks its own LLVM on this platform")
    version = llvm_version(path)
    assert version is not None and version[0] >= MIN_LLVM_MAJOR


@pytest.mark.parametrize("name, major", [
    ("libLLVM-15.so", 15),
    ("libLLVM-14.0.6.so.1", 14),
    ("libLLVM.so.23.1", 23),
    ("libLLVM-17git.so", 17),
    ("llvm-19/lib/libLLVM.so", 19),
])
def test_llvm_version_from_file_name(tmp_path, name, major):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    assert llvm_version(path) == (major, 0, 0)
    assert llvm_version(str(path)) == (major, 0, 0)


def test_llvm_version_from_symlink_target(tmp_path):
    target = tmp_path / "libLLVM-18.so.1"
    target.write_bytes(b"")
    link = tmp_path / "libLLVM.so"
    link.symlink_to(target)
    assert llvm_version(link) == (18, 0, 0)


def test_llvm_version_unknown(tmp_path):
    assert llvm_version(tmp_path / "libLLVM-16.so") is None  # no such file
    junk = tmp_path / "libLLVM.so"
    junk.write_bytes(b"not a library")
    assert llvm_version(junk) is None


def test_llvm_version_of_real_libraries():
    paths = candidate_llvm_paths()
    if not paths:
        pytest.skip("no LLVM library on this machine")
    for path in paths:
        assert os.path.exists(path)
        version = llvm_version(path)
        assert version is not None and 3 <= version[0] < 100, (path, version)
    # preferred first: a usable one (if any) comes before the unusable ones
    majors = [llvm_version(p)[0] >= MIN_LLVM_MAJOR for p in paths]
    assert majors == sorted(majors, reverse=True)


def test_init_backend_rejects_unknown_variant():
    with pytest.raises(ValueError, match=r"init_backend\(\): variant 'llvm_ad_rbg' is not available; "
                                         r"this Mitsuba build has .*llvm_ad_rgb"):
        init_backend("llvm_ad_rbg")


def test_init_backend_rejects_variant_without_autodiff():
    import mitsuba as mi

    if "scalar_rgb" not in mi.variants():
        pytest.skip("this Mitsuba build has no scalar_rgb")
    before = init_backend()
    with pytest.raises(ValueError, match=r"init_backend\(\): variant 'scalar_rgb' has no automatic "
                                         "differentiation"):
        init_backend("scalar_rgb")
    assert mi.variant() == before  # left as it was


def test_init_backend_keeps_the_current_ad_variant(monkeypatch):
    import mitsuba as mi

    monkeypatch.delenv("INVPBR_VARIANT", raising=False)
    variant = init_backend("llvm_ad_rgb", threads=2)
    assert variant == "llvm_ad_rgb" == mi.variant()
    assert init_backend() == "llvm_ad_rgb"


def test_init_backend_reads_the_environment(monkeypatch):
    monkeypatch.setenv("INVPBR_VARIANT", "no_such_variant")
    with pytest.raises(ValueError, match="'no_such_variant' is not available"):
        init_backend()


def test_llvm_error_is_exported():
    assert invpbr.LLVMError is LLVMError
    assert issubclass(LLVMError, RuntimeError)


@needs_bad_llvm
def test_batch_reports_the_cause_of_a_bad_llvm(tmp_path):
    # The LLVMError message runs over several lines; the summary keeps its first.
    (tmp_path / "scenes" / "one").mkdir(parents=True)
    (tmp_path / "scenes" / "one" / "invpbr.toml").write_text("")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "invpbr", "batch", str(tmp_path / "scenes"), "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"DRJIT_LIBLLVM_PATH": BAD_LLVM})
    assert proc.returncode == 1, proc.stderr
    (row,) = json.loads((out / "summary.json").read_text())
    assert row["scene"] == "one" and row["status"] == "failed"
    assert row["message"].startswith(f"invpbr run: error: DRJIT_LIBLLVM_PATH={BAD_LLVM!r} is LLVM")
