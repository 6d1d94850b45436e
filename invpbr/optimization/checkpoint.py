"""Checkpoints of a run, and resuming from one (``invpbr run --resume``).

A checkpoint is one file, ``OUT/checkpoint/state.npz``, holding everything
the next step depends on: every latent with its Adam state (moments, step
count, own learning rate), the GradScaler's scale (half precision), each
estimate's own state (:meth:`invpbr.estimates.Estimate.state`: its
coarse-to-fine stage, a remeshed triangulation), the next step's index, the
random-number generator of the view subsets (the renders' seeds are a
function of the step index), the loss history, each step's time, the
trajectory of small estimates, the skipped steps and the elapsed time.

It is written atomically: into a temporary file beside it, flushed and
``fsync``-ed, then renamed over the previous one (``os.replace``), so that
a process killed at any moment leaves either the previous checkpoint or the
new one, never a torn file. Resuming from it takes the same steps with the
same numbers as the run that was never stopped (see README, "Runs that
survive", for how equal the estimates come out).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The checkpoint's folder inside a result folder.
FOLDER = "checkpoint"
#: The checkpoint file in it.
FILE = "state.npz"
#: Format version (a checkpoint of another version is refused with a message).
VERSION = 1
#: Seconds to sleep between writing the temporary file and renaming it (tests
#: kill a run there, "during the checkpoint write"); unset in normal use.
SLEEP_ENV = "INVPBR_CHECKPOINT_SLEEP"


def checkpoint_path(out: str | os.PathLike) -> Path:
    """The checkpoint file of result folder ``out``."""
    return Path(out) / FOLDER / FILE


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # (not on Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _plain(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` with its numpy arrays moved into ``arrays`` (replaced by
    ``{"__array__": name}``), JSON-serializable otherwise."""
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"__array__": name}
    if isinstance(value, dict):
        return {str(k): _plain(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return {"__float__": repr(value)}
    return value


def _unplain(value: Any, arrays) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return np.array(arrays[value["__array__"]])
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _unplain(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v, arrays) for v in value]
    return value


def write_checkpoint(path: Path, state: dict[str, Any]) -> float:
    """Write ``state`` (plain values and numpy arrays) atomically to ``path``;
    the seconds it took."""
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta = _plain(state, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        sleep = os.environ.get(SLEEP_ENV)
        if sleep:
            time.sleep(float(sleep))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_folder(path.parent)
    return time.perf_counter() - start


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state written by :func:`write_checkpoint`.

    Raises:
        ValueError: the file is not a checkpoint this version of invpbr reads.
    """
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable checkpoint ({e}); delete it to start "
                         "the run from the beginning") from None
    state = _unplain(meta, arrays)
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r}, this invpbr "
                         f"reads version {VERSION}; delete it to start the run from the beginning")
    return state


def run_state(run, rng: np.random.Generator) -> dict[str, Any]:
    """Everything of ``run`` that the next step depends on (see the module)."""
    estimates = {}
    for e in run.estimates:
        estimates[e.key] = {k: (np.asarray(v) if isinstance(v, (np.ndarray, list)) and
                                np.asarray(v).dtype != object else v)
                            for k, v in e.state().items()}
    return {
        "version": VERSION,
        "scene": run.problem.name,
        "settings": settings_fingerprint(run.problem.config),
        "next_step": run.next_step,
        "iterations": run.iterations,
        "status": run.status,
        "rng": rng.bit_generator.state,
        "history": [float(x) for x in run.history],
        "step_seconds": [float(x) for x in run.step_seconds],
        "skipped": list(run.skipped),
        "elapsed": float(run.elapsed_now()),
        "frozen": bool(run.frozen),
        "estimates": estimates,
        "latents": run.latents.optimizer_state(),
        "scaler": run.latents.scaler_state(),
        "trajectory": run.trajectory.settle() if run.trajectory is not None else {},
        "watch": run.watch.state() if run.watch is not None else None,
    }


def settings_fingerprint(config) -> str:
    """The settings a resumed run must share with its checkpoint (JSON)."""
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def check_settings(state: dict[str, Any], config, path: Path) -> None:
    """Refuse a checkpoint written with other settings than ``config``'s.

    Raises:
        ValueError: naming the changed ``[table] key`` entries.
    """
    settings = settings_fingerprint(config)
    if state["settings"] != settings:
        old, new = json.loads(state["settings"]), json.loads(settings)
        changed = sorted(f"[{table}] {key}" for table in set(old) | set(new)
                         for key in set(_keys(old.get(table))) | set(_keys(new.get(table)))
                         if _get(old.get(table), key) != _get(new.get(table), key))
        raise ValueError(f"{path}: the checkpoint was written with other settings "
                         f"({', '.join(changed) or 'estimates'}); resume with the same "
                         "invpbr.toml and options, or delete the checkpoint to start again")


def restore_run(run, state: dict[str, Any], path: Path) -> None:
    """Bring ``run`` (just started by :func:`~.loop.start_run`) to a checkpoint's state.

    Raises:
        ValueError: the checkpoint belongs to other settings or estimates.
    """
    check_settings(state, run.problem.config, path)
    by_key = {e.key: e for e in run.estimates}
    if set(by_key) != set(state["estimates"]):
        raise ValueError(f"{path}: the checkpoint estimates {sorted(state['estimates'])}, "
                         f"this run {sorted(by_key)}")
    latents = run.latents
    for key, s in state["estimates"].items():
        by_key[key].load_state(latents, run.problem.params, s)
    latents.load_optimizer_state(state["latents"])
    latents.load_scaler_state(state["scaler"])
    run.next_step = int(state["next_step"])
    run.history = list(state["history"])
    run.step_seconds = list(state["step_seconds"])
    run.skipped = list(state["skipped"])
    run.elapsed = float(state["elapsed"])
    run.rng_state = state["rng"]
    run.resumed_from = run.next_step
    if state.get("watch") is not None:  # (checkpoints before it was kept have none)
        from .watch import Watch

        run.watch = Watch.from_state(state["watch"], run)
    if run.trajectory is not None:
        run.trajectory.done = {k: v for k, v in state["trajectory"].items()
                               if k in run.trajectory.done}


def _keys(table) -> list:
    if isinstance(table, dict):
        return list(table)
    if isinstance(table, list):
        return list(range(len(table)))
    return []


def _get(table, key):
    try:
        return table[key]
    except (KeyError, IndexError, TypeError):
        return None


@dataclass
class Checkpoints:
    """When and where a run writes its checkpoints.

    Args:
        path: the checkpoint file.
        every: write after every this many steps (0: not by count).
        seconds: write when this many seconds passed since the last (0: not by time).
    """

    path: Path
    every: int = 0
    seconds: float = 60.0
    last: float = field(default_factory=time.perf_counter)
    written: int = 0
    write_seconds: float = 0.0

    @classmethod
    def for_run(cls, out: str | os.PathLike, config) -> "Checkpoints":
        opt = config.optimize
        return cls(checkpoint_path(out), every=opt.checkpoint_every,
                   seconds=opt.checkpoint_seconds)

    def due(self, steps_done: int) -> bool:
        return bool((self.every and steps_done % self.every == 0)
                    or (self.seconds and time.perf_counter() - self.last >= self.seconds))

    def save(self, run, rng: np.random.Generator) -> None:
        """Write ``run``'s checkpoint now (``write_seconds`` counts the read-back
        of the latents and Adam's state too)."""
        start = time.perf_counter()
        write_checkpoint(self.path, run_state(run, rng))
        self.written += 1
        self.last = time.perf_counter()
        self.write_seconds += self.last - start

    def load(self) -> dict[str, Any] | None:
        """The checkpoint's state, or None when there is none (a killed write's
        temporary files are removed)."""
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
        if not self.path.is_file():
            return None
        return read_checkpoint(self.path)
