"""``flowsteer report``: one self-contained HTML page comparing run folders.

The page (``OUT/index.html``) and the PNGs it shows (``OUT/img/``) open from disk with no server and no
network: images are relative links, styles are inline, there is no script.  Sections:

1. Samples: each run's samples beside its reference (the base run's samples from the same noise, and
   the target data for ``adapt`` runs; the training data for ``pretrain`` runs).
2. Training curves: reward / diversity / W2-to-base for ``align``, W2 and Frechet distance per NFE for
   ``adapt``, the loss for ``pretrain``.
3. The reward-diversity Pareto plot of each alpha sweep given.
4. Metric vs NFE: W2 / Frechet distance of ``adapt`` runs and, where ``evaluation.json`` exists, every
   evaluated figure per NFE.
5. A table of final metrics (``final_metrics.json``, and ``evaluation.json`` where present).

It opens with what was run and what to conclude, in sentences made from the measured figures
(:mod:`flowsteer.report.summary`).
"""

from .builder import write_report
from .collect import collect_runs, default_report_out

__all__ = ["collect_runs", "default_report_out", "write_report"]
