"""Plain NumPy reference implementations of every op: the spec the fast backends must match.

Obvious rather than fast, and float64 friendly.  ``<op>_forward`` and ``<op>_backward`` of
each op of :data:`nbclust.engine.optable.OPS` are in the module of its family (``conv``,
``pointwise``, ``losses``); the other backends run these for the ops they do not implement.
The pointwise ops and the losses (but their ``np.add.at`` segment sums) are array-module
generic: the module comes from the inputs (:func:`._runtime.array_module`), and the CuPy backend
runs them on device arrays as they are.  The conv ops stay NumPy (``linear`` and ``reshape``
use no array-module function).
"""

from nbclust.reference import conv, losses, pointwise  # noqa: F401  (the families, read by nbclust.engine.backend)
