"""Checkpoints of a ``[reconstruct]`` run, stage by stage (``invpbr run --resume``).

A reconstruction writes ``OUT/checkpoint/state.npz`` (the same file, format and
atomic write as an optimization's, :mod:`invpbr.optimization.checkpoint`) once the
hull's material and light are fitted and scored, and again after every later stage
that ran to its end: the object then (mesh, per-vertex material, envmap), the hull
with its figures, the stage log, the random generator's state, the warnings and the
time spent. A resumed run skips the hull and the stages done and goes on with the
next stage; a stage cut short by a signal or a kill is run again from its start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..optimization.checkpoint import (VERSION, settings_fingerprint, check_settings,
                                       checkpoint_path, read_checkpoint, write_checkpoint)
from .fit import FitLog, ObjectState

#: ``kind`` of a reconstruction's checkpoint (an optimization's has none).
KIND = "reconstruct"
_ARRAYS = ("vertices", "faces", "colors", "roughness", "envmap")


def _arrays(state: ObjectState) -> dict[str, np.ndarray]:
    return {k: np.asarray(getattr(state, k)) for k in _ARRAYS}


def _state(d: dict[str, Any]) -> ObjectState:
    return ObjectState(np.asarray(d["vertices"], np.float32), np.asarray(d["faces"], np.int64),
                       np.asarray(d["colors"], np.float32), np.asarray(d["roughness"], np.float32),
                       np.asarray(d["envmap"], np.float32))


@dataclass
class Resumed:
    """A reconstruction's state read back from its checkpoint."""

    next_stage: int
    state: ObjectState
    hull: ObjectState
    hull_figures: dict
    log: FitLog
    rng: dict | None
    notes: list
    seconds: dict


@dataclass
class ReconstructCheckpoints:
    """Where a reconstruction writes its checkpoint, and reading it back."""

    path: Path

    @classmethod
    def for_out(cls, out: str | os.PathLike) -> "ReconstructCheckpoints":
        return cls(checkpoint_path(out))

    def save(self, config, *, next_stage: int, state: ObjectState, hull: ObjectState,
             hull_figures: dict, log: FitLog, rng: dict | None, notes: list,
             seconds: dict) -> None:
        """Write the checkpoint: ``next_stage`` of the joint fit comes next."""
        write_checkpoint(self.path, {
            "version": VERSION, "kind": KIND, "settings": settings_fingerprint(config),
            "next_stage": int(next_stage), "state": _arrays(state), "hull": _arrays(hull),
            "hull_figures": dict(hull_figures),
            "log": {"stages": list(log.stages), "losses": [float(x) for x in log.losses],
                    "skipped": int(log.skipped)},
            "rng": rng, "notes": [str(n) for n in notes],
            "seconds": {k: float(v) for k, v in seconds.items()}})

    def load(self, config) -> Resumed | None:
        """The checkpoint's state, or None when there is none.

        Raises:
            ValueError: not a reconstruction's checkpoint, another version, or
                written with other settings (the message names the file and keys).
        """
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
        if not self.path.is_file():
            return None
        saved = read_checkpoint(self.path)
        if saved.get("kind") != KIND:
            raise ValueError(f"{self.path}: the checkpoint of an optimization, not of a "
                             "[reconstruct] run; delete it to start the reconstruction again")
        check_settings(saved, config, self.path)
        log = FitLog(stages=list(saved["log"]["stages"]),
                     losses=list(saved["log"]["losses"]), skipped=int(saved["log"]["skipped"]))
        return Resumed(next_stage=int(saved["next_stage"]), state=_state(saved["state"]),
                       hull=_state(saved["hull"]), hull_figures=dict(saved["hull_figures"]),
                       log=log, rng=saved["rng"], notes=list(saved["notes"]),
                       seconds=dict(saved["seconds"]))

    def drop(self) -> None:
        """Remove the checkpoint (a completed reconstruction)."""
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass
