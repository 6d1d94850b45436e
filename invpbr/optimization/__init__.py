"""The optimization: the loop (:mod:`.loop`), the optimizer's store of latents
(:mod:`.latents`), step strategies (:mod:`.strategies`), image losses
(:mod:`.losses`) and gradient checks (:mod:`.gradcheck`). A new loss goes in
:mod:`.losses`; a new way of stepping in :mod:`.strategies`.

(Named ``optimization`` because ``invpbr.optimize`` is the function.)
"""

from .loop import StepInfo, decay_factor, optimize
from .strategies import can_freeze

__all__ = ["StepInfo", "can_freeze", "decay_factor", "optimize"]
