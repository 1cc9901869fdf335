"""Training progress for the command line: an epoch bar (tqdm, optional) and one line per epoch."""

from __future__ import annotations

import sys
import time

_SKIP = ("phase", "epoch", "seconds")


def format_record(record, elapsed) -> str:
    """``[phase] epoch E  term=v ...  acc=.. nmi=.. ari=..  (Xs, total Ys)``."""
    terms = [f"{k}={v:.4g}" for k, v in record.items() if k not in _SKIP and isinstance(v, (int, float))]
    return (
        f"[{record.get('phase', '')}] epoch {record.get('epoch', '?')}  " + "  ".join(terms)
        + f"  ({record.get('seconds', 0.0):.1f}s, total {elapsed:.1f}s)"
    )


class Progress:
    """Callback for ``fit``: advances a tqdm bar on stderr (a terminal only) and prints one line per epoch."""

    def __init__(self, total_epochs: int, *, quiet=False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.start = time.perf_counter()
        self.bar = None
        if not quiet and total_epochs > 1 and self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total_epochs, unit="epoch", file=self.stream, leave=False)

    def __call__(self, est, record):
        if self.quiet:
            return
        line = format_record(record, time.perf_counter() - self.start)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary_table(rows: dict) -> str:
    """A two-column text table of ``{name: value}``."""
    width = max(len(k) for k in rows)
    lines = []
    for k, v in rows.items():
        lines.append(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    return "\n".join(lines)
