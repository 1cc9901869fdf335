"""Fast kernels: ``cpu`` (Numba) and ``gpu`` (CuPy).  Installed as ``nbclust.kernels``."""
