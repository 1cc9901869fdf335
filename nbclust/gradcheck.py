"""``python -m nbclust.gradcheck``: the command of :mod:`nbclust.engine.gradcheck`."""
from nbclust.engine.gradcheck import main

if __name__ == "__main__":
    raise SystemExit(main())
