"""Plain NumPy reference implementations of every op: the spec the fast backends must match.

Obvious rather than fast, and float64 friendly.  The pointwise ops and the
losses (but their ``np.add.at`` segment sums) are array-module generic: the
module comes from the inputs (:func:`._xp.array_module`), and the CuPy
backend runs them on device arrays as they are.  The conv ops stay NumPy.  ``OPS`` maps each op name of
:data:`nbclust.optable.OPS` to its ``(forward, backward)`` pair.
"""

from nbclust.reference import conv as _conv
from nbclust.reference import losses as _losses
from nbclust.reference import pointwise as _pointwise

OPS = {}
for _module in (_conv, _pointwise, _losses):
    OPS.update(_module.OPS)
