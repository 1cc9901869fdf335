"""``python -m nbclust.fit``: the command of :mod:`nbclust.cli.fit`."""
from nbclust.cli.fit import main

if __name__ == "__main__":
    raise SystemExit(main())
