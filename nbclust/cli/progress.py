"""Training progress for the command line: an epoch bar (tqdm, optional) and one line per epoch.

Each line shows the epoch out of its phase's cap and an estimate of the time left to that cap
(the phase's mean seconds per epoch so far, times the epochs left; a stopping rule may end the
phase sooner, hence "at most").  Phase caps come from the estimator's declared ``phases``
(:mod:`nbclust.methods.phases`); an estimator without them counts all its epochs as one phase.
"""

from __future__ import annotations

import sys
import time

_SKIP = ("phase", "epoch", "seconds")


def phase_caps(est) -> dict:
    """``{phase name: most epochs}`` of the estimator's active phases ({} when it declares none)."""
    from nbclust.methods.phases import Phase

    return {s.name: s.budget(est) for s in getattr(est, "phases", ()) if isinstance(s, Phase) and s.active(est)}


def total_epochs(est) -> int:
    if hasattr(est, "epoch_budget"):
        return est.epoch_budget()
    p = est.get_params()
    return int(p.get("epochs", 1) or 0) + int(p.get("pretrain_epochs", 0) or 0)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_record(record, elapsed, position=None, left=None) -> str:
    """``[phase] epoch POSITION  term=v ...  acc=.. nmi=.. ari=..  (Xs, total Ys, LEFT)``; the position
    defaults to the record's epoch."""
    terms = [f"{k}={v:.4g}" for k, v in record.items() if k not in _SKIP and isinstance(v, (int, float))]
    position = record.get("epoch", "?") if position is None else position
    tail = f"{record.get('seconds', 0.0):.1f}s, total {elapsed:.1f}s" + ("" if left is None else f", {left}")
    return f"[{record.get('phase', '')}] epoch {position}  " + "  ".join(terms) + f"  ({tail})"


class Progress:
    """Callback for ``fit``: advances a tqdm bar on stderr (a terminal only) and prints one line per
    epoch, or hands each line to ``write`` (then no bar)."""

    def __init__(self, est, *, quiet=False, stream=None, write=None):
        self.stream = stream or sys.stderr
        self.quiet, self.write = quiet, write
        self.start = time.perf_counter()
        self.caps = phase_caps(est)
        self.total = total_epochs(est)
        self.seconds: dict = {}  # phase -> seconds of its epochs run by this process
        self.bar = None
        if not quiet and write is None and self.total > 1 and self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=self.total, unit="epoch", file=self.stream, leave=False)

    def __call__(self, est, record):
        if self.quiet:
            return
        phase = record.get("phase", "")
        times = self.seconds.setdefault(phase, [])
        times.append(float(record.get("seconds", 0.0)))
        epoch = record.get("epoch", len(times))
        if phase in self.caps and hasattr(est, "phase_epoch_"):
            done, cap = int(est.phase_epoch_), self.caps[phase]
        else:
            done, cap = epoch, self.total
        position = f"{done}/{cap}" + ("" if done == epoch else f" (run epoch {epoch})")
        left = f"at most {duration(max(cap - done, 0) * sum(times) / len(times))} left"
        if len(self.caps) > 1 and phase in self.caps:
            left += f" in {phase}"
        line = format_record(record, time.perf_counter() - self.start, position, left)
        if self.write is not None:
            self.write(line)
        elif self.bar is not None:
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
