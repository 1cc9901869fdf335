"""The engine, from the spec up: the op table (:mod:`.optable`, through which every op is called, and
the shape arithmetic of the conv family, :mod:`.convshape`), the backends behind it (:mod:`.backend`:
``reference`` and ``cpu`` / ``cuda``, i.e. :mod:`nbclust.reference` and :mod:`nbclust.kernels`), the
layers (:mod:`.nn`) and optimisers (:mod:`.optim`) on top, and the finite-difference check of every
op (:mod:`.gradcheck`, ``python -m nbclust.gradcheck``).  Nothing is imported here.
"""
