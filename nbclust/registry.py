"""The names nbclust offers, in one import-light place: methods, backends, data sets, features.

``python -m nbclust.fit --help`` builds its choices from here without importing NumPy,
Numba or scikit-learn; the modules that implement the names read them from here too
(:mod:`nbclust.methods`, :mod:`nbclust.engine.backend`, :mod:`nbclust.data.datasets`,
:mod:`nbclust.data.features`), so there is no second copy to keep in step.  Adding a method is
its module plus one line in :data:`METHODS`.
"""

METHODS = {
    "dcae": ("nbclust.methods.dcae", "DCAE"),
    "dbc": ("nbclust.methods.dbc", "DBC"),
    "fcae-kmeans": ("nbclust.methods.dbc", "FCAEKMeans"),
    "dctl": ("nbclust.methods.dctl", "DCTL"),
    "depict": ("nbclust.methods.depict", "DEPICT"),
    "dcec": ("nbclust.methods.dcec", "DCEC"),
    "kmeans": ("nbclust.methods.baseline", "KMeansPixels"),
    "acpic": ("nbclust.methods.baseline", "ACPICPixels"),
}
"""``--method`` name -> (module, class) of its estimator."""

BACKENDS = ("reference", "cpu", "cuda")
"""The array backends (:func:`nbclust.engine.backend.get_backend`)."""

DATASETS = ("digits", "mnist", "mnist-test", "mnist-full", "fashion-mnist", "fashion-mnist-train",
            "fashion-mnist-test", "usps", "coil20", "yaleb")
"""The named data sets of :func:`nbclust.data.datasets.load`."""

FEATURES = ("none", "dsift-pca")
"""What a method clusters (:func:`nbclust.data.features.features_for`): the pixels, or dense SIFT + PCA."""
