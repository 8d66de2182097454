"""Learning-rate sweeps of your own training function, on one machine or a Ray cluster.

You give ``train(config) -> records`` and a :class:`Grid` of learning rates and any other
axes (widths, depths, methods, seeds); :func:`run_sweep` trains every run once, each in a
record file of its own, skipping on a second start what is done, stopping runs that
diverge, retrying runs whose training raised or whose worker died. :func:`write_report`
reads the records back: best rate per setting, seed spread, first diverging rate and its
ratio to the best, basin width, how far the best rate moves with width and depth, paired
seeds between methods, and the plots people look at. No deep-learning framework is
imported here: the training function brings its own.

Examples:
  >>> import tempfile
  >>> from maxp_core.sweep import Grid, run_sweep, write_report
  >>> def train(config):   # gradient descent on a quadratic of curvature 'width' / 64
  ...     x, k = 1.0, config["width"] / 64
  ...     for step in range(20):
  ...         yield {"step": step, "loss": x * x}
  ...         x -= config["lr"] * k * x
  >>> out = tempfile.mkdtemp()
  >>> done = run_sweep(train, Grid(lr=[0.1, 0.5, 1.0, 3.0], width=[64, 128]), out, backend="inline",
  ...                  progress=False)
  >>> done.trained, done.diverged
  (8, 2)
  >>> report = write_report(out, plots=False)
  >>> [(s["setting"]["width"], s["best_lr"], s["first_diverging_lr"]) for s in report["settings"]]
  [(64, 1.0, 3.0), (128, 0.5, 3.0)]
"""

from maxp_core.sweep.grid import Grid
from maxp_core.sweep.records import final_loss, read_runs
from maxp_core.sweep.report import summarize, write_report
from maxp_core.sweep.runner import SweepResult, run_sweep

__all__ = ["Grid", "SweepResult", "final_loss", "read_runs", "run_sweep", "summarize", "write_report"]
