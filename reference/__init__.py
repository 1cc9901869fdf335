"""Plain NumPy reference implementations of every op: the spec the fast backends must match.

Obvious rather than fast, and float64 friendly.  ``OPS`` maps each op name of
:data:`nbclust.optable.OPS` to its ``(forward, backward)`` pair.
"""

from nbclust.reference import conv as _conv
from nbclust.reference import losses as _losses
from nbclust.reference import pointwise as _pointwise

OPS = {}
for _module in (_conv, _pointwise, _losses):
    OPS.update(_module.OPS)
