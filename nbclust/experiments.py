"""``python -m nbclust.experiments``: the command of :mod:`nbclust.cli.experiments`."""
from nbclust.cli.experiments import main

if __name__ == "__main__":
    raise SystemExit(main())
