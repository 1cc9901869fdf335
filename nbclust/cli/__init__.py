"""The front ends: ``python -m nbclust.fit`` (:mod:`.fit`; its output folder :mod:`.rundir`, its
result files :mod:`.results`, progress :mod:`.progress`, figures :mod:`.plots`) and
``python -m nbclust.experiments`` (:mod:`.experiments`).  Nothing is imported here, so ``--help``
stays light.
"""
