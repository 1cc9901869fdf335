"""nbclust: deep convolutional image clustering on a gradient-checked NumPy/Numba engine."""

__version__ = "0.1.0"
