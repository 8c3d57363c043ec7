"""flowsteer: fine-tune flow-matching generative models.

Public API (see the README for an example)::

    from flowsteer import PretrainConfig, TrainConfig, pretrain, load_run, load_data
"""

__version__ = "0.1.0"

from .couplings import CoupledBatch, ExactOTCoupling, IndependentCoupling, SinkhornCoupling, build_coupling  # noqa: E402
from .data import DataSet, DataSplit, Normalizer, load_data  # noqa: E402
from .errors import FlowsteerError  # noqa: E402
from .methods.pretrain import PretrainConfig, pretrain  # noqa: E402
from .paths import BrownianBridgePath, LinearPath, PathSample, TimeSampler  # noqa: E402
from .runs import Run, load_run  # noqa: E402
from .solvers import SampleResult, integrate  # noqa: E402
from .training import TrainConfig, Trainer  # noqa: E402

__all__ = [
    "__version__", "BrownianBridgePath", "CoupledBatch", "DataSet", "DataSplit", "ExactOTCoupling",
    "FlowsteerError", "IndependentCoupling", "LinearPath", "Normalizer", "PathSample", "PretrainConfig",
    "Run", "SampleResult", "SinkhornCoupling", "TimeSampler", "TrainConfig", "Trainer", "build_coupling",
    "integrate", "load_data", "load_run", "pretrain",
]
