"""Many scene folders: each runs in its own process (``invpbr run``), so that
one broken or crashing scene never stops the others; a summary table collects
them.

Two engines run the processes:

- ``local``: this machine, ``jobs`` at a time;
- ``ray``: one Ray task per scene folder (``pip install invpbr[ray]``), on a
  cluster at ``address`` or on a local one that ``ray.init()`` starts; each
  task asks for the CPUs (and GPUs) its job uses; tasks of lost workers are
  retried. Results are written by the worker into OUT, which must be a path
  every node sees.

Either way each job's Dr.Jit thread pool is capped (``INVPBR_THREADS``, see
:func:`invpbr.backend.init_backend`) so that jobs do not oversubscribe the
cores; ``--variant`` / ``--backend`` reach every job; a scene killed (by the
system: out of memory, a lost node) is resumed from its checkpoint
(``retries`` times); ``summary.csv`` / ``summary.json`` are rewritten
atomically after every scene; ``resume`` skips completed scenes and resumes
checkpointed ones. Statuses: ``completed``, ``diverged``, ``interrupted``,
``failed``, ``timeout`` (read from the scene's result.json wherever it was
written, with its error).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .signals import InstallsSignalHandlers

#: Statuses of a summary row.
STATUSES = ("completed", "diverged", "interrupted", "failed", "timeout", "stopped")
#: Statuses of a run that went to its end with a result to keep: ``--resume`` (of
#: ``invpbr run`` and ``invpbr batch``) does not run it again. (``worse than the
#: hull``: a ``[reconstruct]`` whose optimization lost to its hull, which it returned.)
FINISHED = ("completed", "worse than the hull")
#: Seconds a job has, after SIGTERM at its timeout, to write its checkpoint and
#: partial result before it is killed.
GRACE_SECONDS = 30.0


def find_scene_folders(root: str | Path) -> list[Path]:
    """Sub-folders of ``root`` that hold an invpbr.toml or a scene.xml, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and ((p / "invpbr.toml").is_file() or (p / "scene.xml").is_file()))


@dataclass
class JobSettings:
    """What every job of a batch gets.

    Attributes:
        iterations, spp: override each scene's settings.
        timeout: seconds after which a job gets SIGTERM (and, after
            :data:`GRACE_SECONDS`, SIGKILL); status ``timeout``.
        variant: ``--variant`` of every job (None: its default).
        backend: ``--backend`` of every job (``auto``, ``cpu``, ``gpu``).
        threads: Dr.Jit threads of each job (``INVPBR_THREADS``; None: all cores).
        retries: times a job killed by a signal it did not ask for is resumed.
        resume: resume (or skip, when completed) what an earlier batch left.
        started: when the batch started (a checkpoint written since is this
            batch's own: a retried job resumes from it).
        env: environment variables of every job (besides the inherited ones).
    """

    iterations: int | None = None
    spp: int | None = None
    timeout: float | None = None
    variant: str | None = None
    backend: str | None = None
    threads: int | None = None
    retries: int = 1
    resume: bool = False
    started: float = field(default_factory=time.time)
    env: dict[str, str] = field(default_factory=dict)

    def command(self, folder: Path, out_dir: Path, resume: bool) -> list[str]:
        cmd = [sys.executable, "-m", "invpbr"]
        if self.variant:
            cmd += ["--variant", self.variant]
        if self.backend and self.backend != "auto":
            cmd += ["--backend", self.backend]
        cmd += ["run", str(folder), "--out", str(out_dir), "--no-progress"]
        if self.iterations is not None:
            cmd += ["--iterations", str(self.iterations)]
        if self.spp is not None:
            cmd += ["--spp", str(self.spp)]
        if resume:
            cmd.append("--resume")
        return cmd


def _result_doc(out_dir: Path) -> tuple[dict | None, int | None]:
    """The scene's result.json (None if missing or unreadable) and its mtime (ns)."""
    path = out_dir / "result.json"
    try:
        return json.loads(path.read_text()), path.stat().st_mtime_ns
    except (OSError, ValueError):
        return None, None


def _own_checkpoint(out_dir: Path, started: float) -> bool:
    path = out_dir / "checkpoint" / "state.npz"
    return path.is_file() and path.stat().st_mtime >= started - 1.0


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the run writes its checkpoint and partial result), then SIGKILL."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class BatchStop(InstallsSignalHandlers):
    """SIGINT / SIGTERM of a local batch (inside a ``with`` block): jobs not yet
    started are not started, running ones get SIGTERM (each writes its
    checkpoint and partial result)."""

    def __init__(self):
        self.signum: int | None = None
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.previous: dict[int, Any] = {}

    def handle(self, signum, frame) -> None:
        self.signum = self.signum or signum
        with self.lock:
            for proc in self.children:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def started(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.children.add(proc)
            if self.signum is not None:
                proc.send_signal(signal.SIGTERM)

    def ended(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.children.discard(proc)


def run_scene_process(folder: Path, out_dir: Path, settings: JobSettings | None = None,
                      stop: BatchStop | None = None, **overrides) -> dict[str, Any]:
    """Run ``invpbr run`` on one folder in a child process; one summary row:
    scene, status, errors, seconds, seconds_per_iteration, iterations,
    skipped_steps, resumed_from, attempts, message. ``stop``: a stopped batch's
    jobs are not started (status ``interrupted``) or get SIGTERM."""
    settings = settings or JobSettings(**overrides)
    folder, out_dir = Path(folder), Path(out_dir)
    row: dict[str, Any] = {"scene": folder.name, "status": "failed", "errors": {},
                           "seconds": 0.0, "seconds_per_iteration": None, "iterations": None,
                           "skipped_steps": None, "resumed_from": None, "attempts": 0,
                           "message": ""}
    env = dict(os.environ) | settings.env
    if settings.threads:
        env["INVPBR_THREADS"] = str(settings.threads)
    start = time.perf_counter()
    resume = settings.resume
    if stop is not None and stop.signum is not None:
        row.update(status="interrupted", message="not started: the batch was stopped")
        return row
    while True:
        row["attempts"] += 1
        _, before = _result_doc(out_dir)
        cmd = settings.command(folder, out_dir, resume or _own_checkpoint(out_dir, settings.started))
        timed_out = False
        with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=env) as proc:
            err_box: list[str] = []
            reader = threading.Thread(target=lambda: err_box.append(proc.stderr.read()),
                                      daemon=True)
            reader.start()
            if stop is not None:
                stop.started(proc)
            try:
                proc.wait(timeout=settings.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _stop(proc)
            reader.join()
            if stop is not None:
                stop.ended(proc)
        stderr = err_box[0] if err_box else ""
        killed = proc.returncode < 0 and not timed_out
        if killed and row["attempts"] <= settings.retries and (stop is None or stop.signum is None):
            continue  # killed from outside (out of memory, a lost node): resume it
        break
    row["seconds"] = time.perf_counter() - start
    doc, after = _result_doc(out_dir)
    fresh = doc is not None and after != before
    if fresh:
        row.update(status=doc.get("status", "failed"), errors=doc.get("errors", {}),
                   seconds_per_iteration=doc.get("seconds_per_iteration"),
                   iterations=doc.get("iterations"), skipped_steps=doc.get("skipped_steps"),
                   resumed_from=doc.get("resumed_from"), message=doc.get("error") or "")
    if timed_out:
        row["status"] = "timeout"
        row["message"] = (f"timed out after {settings.timeout:g} s" +
                          ("; partial result and checkpoint kept (resume with --resume)"
                           if fresh else ""))
    elif not fresh:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        # invpbr's own error (which may go on over several lines) starts with
        # "invpbr run: error:"; after a crash, the last line says what happened.
        ours = [ln for ln in lines if ln.startswith("invpbr run: error:")]
        if proc.returncode < 0:
            row["message"] = f"killed by signal {-proc.returncode}"
        else:
            row["message"] = ours[-1] if ours else lines[-1] if lines else \
                f"exit code {proc.returncode}"
    elif row["status"] == "failed" and not row["message"]:
        ours = [ln for ln in stderr.splitlines() if ln.startswith("invpbr run: error:")]
        row["message"] = ours[-1] if ours else ""
    return row


def _completed_row(folder: Path, out_dir: Path) -> dict[str, Any] | None:
    """The summary row of a scene an earlier batch finished (``resume``; a status
    in :data:`FINISHED`), else None."""
    doc, _ = _result_doc(out_dir)
    if doc is None or doc.get("status") not in FINISHED or (out_dir / "checkpoint").exists():
        return None
    status = doc["status"]
    return {"scene": folder.name, "status": status, "errors": doc.get("errors", {}),
            "seconds": 0.0, "seconds_per_iteration": doc.get("seconds_per_iteration"),
            "iterations": doc.get("iterations"), "skipped_steps": doc.get("skipped_steps"),
            "resumed_from": doc.get("resumed_from"), "attempts": 0,
            "message": "completed by an earlier batch" if status == "completed"
            else f"finished by an earlier batch ({status})"}


def default_threads(jobs: int) -> int:
    """Dr.Jit threads per job: the cores shared out among ``jobs`` (at least 2,
    see :func:`invpbr.backend.init_backend`)."""
    return max(2, (os.cpu_count() or 2) // max(1, jobs))


def run_batch(root: str | Path, out: str | Path, *, iterations: int | None = None,
              spp: int | None = None, jobs: int = 1, timeout: float | None = None,
              on_row=None, engine: str = "local", address: str | None = None,
              resume: bool = False, variant: str | None = None, backend: str | None = None,
              threads: int | None = None, gpus: float = 0.0, retries: int = 1,
              ray_init: dict | None = None, stop: BatchStop | None = None
              ) -> list[dict[str, Any]]:
    """Run every scene folder in ``root``; write ``out/summary.csv`` and ``.json``
    (after every scene) and ``out/index.html`` (one row per scene, linking to
    each report).

    Args:
        root: folder of scene folders.
        out: results go to ``out/<scene>/``; the summary to ``out/summary.*``.
        iterations, spp: override each scene's settings.
        jobs: scenes run at once (each is one process).
        timeout: seconds after which a scene is stopped (``timeout``).
        on_row: called with each summary row as it finishes.
        engine: ``local`` or ``ray``.
        address: the Ray cluster (None: a local one).
        resume: skip scenes completed in ``out``, resume checkpointed ones.
        variant, backend: every job's Mitsuba variant / backend.
        threads: Dr.Jit threads per job (default: :func:`default_threads`).
        gpus: GPUs per Ray task.
        retries: resumes of a job killed from outside.
        ray_init: further arguments of ``ray.init``.
        stop: SIGINT / SIGTERM handling of the local engine (its ``signum``
            says which signal stopped the batch); default: a new one.

    Returns:
        One row per scene (see :func:`run_scene_process`).
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"invpbr batch: --engine {engine!r}: expected local or ray")
    out = Path(out).resolve()
    folders = [f.resolve() for f in find_scene_folders(root)]
    out.mkdir(parents=True, exist_ok=True)
    settings = JobSettings(iterations=iterations, spp=spp, timeout=timeout, variant=variant,
                           backend=backend, threads=max(2, threads or default_threads(jobs)),
                           retries=retries, resume=resume)
    summary = Summary(out, [f.name for f in folders], on_row)
    todo = []
    for folder in folders:
        done = _completed_row(folder, out / folder.name) if resume else None
        if done is not None:
            summary.add(done)
        else:
            todo.append(folder)
    if engine == "ray":
        run_on_ray(todo, out, settings, summary, jobs=jobs, address=address, gpus=gpus,
                   init=ray_init)
    else:
        with stop or BatchStop() as stop, ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
            list(pool.map(lambda f: summary.add(run_scene_process(f, out / f.name, settings,
                                                                  stop)), todo))
    from ..results.report import write_index

    write_index(out, summary.rows())
    return summary.rows()


class Summary:
    """The batch's rows, written (atomically) after each one arrives."""

    def __init__(self, out: Path, order: list[str], on_row=None):
        self.out, self.order, self.on_row = out, order, on_row
        self.by_scene: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def rows(self) -> list[dict[str, Any]]:
        return [self.by_scene[s] for s in self.order if s in self.by_scene]

    def add(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.by_scene[row["scene"]] = row
            write_summary(self.rows(), self.out)
        if self.on_row is not None:
            self.on_row(row)


def run_on_ray(folders: list[Path], out: Path, settings: JobSettings, summary: Summary, *,
               jobs: int, address: str | None, gpus: float = 0.0, init: dict | None = None) -> None:
    """One Ray task per folder, at most ``jobs`` in flight."""
    try:
        import ray
    except ImportError:
        raise ValueError("invpbr batch --engine ray: Ray is not installed; "
                         "pip install 'invpbr[ray]'") from None
    if not ray.is_initialized():
        pythonpath = os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[2]),
                                                 os.environ.get("PYTHONPATH", "")] if p)
        options = {"runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}},
                   "include_dashboard": False, "log_to_driver": False}
        if address is None:
            options["num_cpus"] = max(1, jobs) * settings.threads
        ray.init(address=address, **(options | (init or {})))
    task = ray.remote(run_scene_process).options(num_cpus=settings.threads, num_gpus=gpus,
                                                 max_retries=settings.retries,
                                                 retry_exceptions=False)
    pending, waiting = list(folders), {}
    while pending or waiting:
        while pending and len(waiting) < max(1, jobs):
            folder = pending.pop(0)
            waiting[task.remote(folder, out / folder.name, settings)] = folder
        ready, _ = ray.wait(list(waiting), num_returns=1)
        for ref in ready:
            folder = waiting.pop(ref)
            try:
                row = ray.get(ref)
            except Exception as e:  # a task that failed for good (its worker lost too often)
                row = {"scene": folder.name, "status": "failed", "errors": {}, "seconds": 0.0,
                       "seconds_per_iteration": None, "iterations": None, "skipped_steps": None,
                       "resumed_from": None, "attempts": settings.retries + 1,
                       "message": f"ray: {type(e).__name__}: {str(e).strip().splitlines()[0]}"}
            summary.add(row)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_summary(rows: list[dict[str, Any]], out: Path) -> None:
    """``summary.json`` (rows as they are) and ``summary.csv`` (one column per
    error key), each replaced atomically."""
    _write_atomic(out / "summary.json", json.dumps(rows, indent=2))
    error_keys = sorted({k for r in rows for k in r["errors"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["scene", "status", "seconds", "seconds_per_iteration", "iterations",
                     "skipped_steps", "resumed_from", "attempts", "message"]
                    + [f"error:{k}" for k in error_keys])
    for r in rows:
        spi = r.get("seconds_per_iteration")
        writer.writerow([r["scene"], r["status"], f"{r['seconds']:.2f}",
                         "" if spi is None else f"{spi:.4f}",
                         *("" if r.get(k) is None else r[k]
                           for k in ("iterations", "skipped_steps", "resumed_from", "attempts")),
                         r["message"]] + [r["errors"].get(k, "") for k in error_keys])
    _write_atomic(out / "summary.csv", buffer.getvalue())


def add_batch_arguments(batch) -> None:
    """The arguments of ``invpbr batch`` (an argparse parser)."""
    batch.add_argument("scenes_dir")
    batch.add_argument("--out", help="results folder (default: out)")
    batch.add_argument("--iterations", type=int)
    batch.add_argument("--spp", type=int)
    batch.add_argument("--jobs", type=int, default=1, help="scenes run at once")
    batch.add_argument("--timeout", type=float, help="seconds per scene (then SIGTERM: "
                       "checkpoint and partial result kept; status timeout)")
    batch.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local processes, or one Ray task per scene (pip install invpbr[ray])")
    batch.add_argument("--address", help="Ray cluster address (default: start a local one)")
    batch.add_argument("--resume", action="store_true",
                       help="skip scenes completed in OUT, resume checkpointed ones")
    batch.add_argument("--threads", type=int,
                       help="Dr.Jit threads per job (default: cores / jobs, at least 2)")
    batch.add_argument("--gpus", type=float, default=0.0, help="GPUs per Ray task")
    batch.add_argument("--retries", type=int, default=1,
                       help="resumes of a scene whose process was killed from outside")
