"""flowsteer: fine-tune flow-matching generative models.

Public API (see the README)::

    from flowsteer import PretrainConfig, TrainConfig, pretrain, load_run, load_data
    from flowsteer import AlignConfig, align, AdaptConfig, adapt, EvaluationConfig, evaluate

Names are imported on first use, so ``flowsteer --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BrownianBridgePath": "paths", "LinearPath": "paths", "PathSample": "paths", "TimeSampler": "paths",
    "CoupledBatch": "couplings", "ExactOTCoupling": "couplings", "IndependentCoupling": "couplings",
    "SinkhornCoupling": "couplings", "build_coupling": "couplings",
    "DataSet": "data", "DataSplit": "data", "Normalizer": "data", "load_data": "data",
    "FlowsteerError": "errors",
    "PretrainConfig": "methods.configs", "AlignConfig": "methods.configs", "AdaptConfig": "methods.configs",
    "pretrain": "methods.pretrain", "align": "methods.orw", "align_sweep": "methods.sweep", "adapt": "methods.gft",
    "EvaluationConfig": "config", "evaluate": "evaluation", "SampleMetrics": "evaluators",
    "Run": "runs", "load_run": "runs", "load_base": "bases",
    "SampleResult": "solvers", "integrate": "solvers",
    "TrainConfig": "config", "Trainer": "training",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowsteer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
