"""The objectives of the field's baselines that ``align`` runs besides ORW's family: method name -> class."""

from __future__ import annotations

from .flow_grpo import FlowGRPOObjective
from .nft import NFTObjective

BASELINE_OBJECTIVES = {"flow-grpo": FlowGRPOObjective, "nft": NFTObjective}
