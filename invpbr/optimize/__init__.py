"""The optimization loop (:mod:`.loop`), its losses (:mod:`.losses`) and
gradient checks (:mod:`.gradcheck`)."""

from .loop import StepInfo, can_freeze, decay_factor, optimize

__all__ = ["StepInfo", "can_freeze", "decay_factor", "optimize"]
