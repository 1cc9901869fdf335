"""CuPy CUDA kernels for every op of the table.  Imported only when ``backend="cuda"`` is asked for."""

OPS: dict = {}
