"""The checks of the Flow-GRPO and DiffusionNFT options of ``align`` (torch-free, like :mod:`.configs`).

Each option belongs to the methods that read it; one given (with a value other than its default) to a method
that does not read it is a mistake worth one line, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import finite

GRPO, NFT = "flow-grpo", "nft"
NEW_METHODS = (GRPO, NFT)

# option -> the methods that read it (the new methods' options; any method not listed must leave it alone)
NEW_OPTION_OWNERS = {
    "group_size": (GRPO, NFT), "clip_range": (GRPO,), "kl_beta": (GRPO,), "sde_noise": (GRPO,),
    "sde_window": (GRPO,), "rollout_updates": (GRPO,), "nft_beta": (NFT,), "nft_old_decay": (NFT,),
    "nft_adaptive_weight": (NFT,),
}
# ORW's options that the new methods do not read (refresh_every and rollout_solver: NFT reads them)
ORW_ONLY = ("alpha", "tau", "weights", "standardize_reward", "coupling", "raft_fraction", "rwr_samples", "w2",
            "w2_budget", "dual_lr", "misaligned_weights", "target_beta", "rollout_pool")
NOT_FOR_GRPO = ("refresh_every", "rollout_solver")


# the knob a sweep (a comma list, like --alpha 0,0.1,0.3) may vary -> the methods it belongs to
SWEEP_KNOBS = {"alpha": ("orw-w2", "orw", "rwr", "raft"), "kl_beta": (GRPO,), "nft_beta": (NFT,)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


knob_flag = _flag


def sweep_of(method: str, lists: dict[str, list[Any]], default: float) -> tuple[str, list[Any], list[str]]:
    """The sweep a command line asks for: (knob, values, problems) from the comma lists of ``SWEEP_KNOBS``
    options (``lists``: option -> the values given).  No list of two or more values: ``("alpha", [default])``
    with no sweep.  Problems: two knobs swept at once, a value given twice (one folder for two runs), or a knob
    swept for a method it does not belong to."""
    swept = {k: v for k, v in lists.items() if k in SWEEP_KNOBS and len(v) > 1}
    if not swept:
        return "alpha", list(lists.get("alpha", [default])), []
    if len(swept) > 1:
        given = " and ".join(f"{_flag(k)} {','.join(f'{x:g}' for x in v)}" for k, v in swept.items())
        return "", [], [f"{given}: a sweep varies one knob; give a list to one of them and one value to the others"]
    knob, values = next(iter(swept.items()))
    names = [f"{x:g}" for x in values]  # sweep_run_dir's folder names: two equal ones would be one run twice
    twice = sorted({n for n in names if names.count(n) > 1}, key=names.index)
    if twice:
        return knob, values, [f"{_flag(knob)} {','.join(names)} gives {', '.join(twice)} more than once (each value "
                              "is one run folder); give each value once"]
    owners = SWEEP_KNOBS[knob]
    if method not in owners:
        own = next(_flag(k) for k, m in SWEEP_KNOBS.items() if method in m)
        # orw's alpha is 0 (an --alpha list is refused for it): its family is swept through orw-w2
        hint = ("sweep --alpha A,B,... with --method orw-w2 (orw is its alpha = 0)" if method == "orw"
                else f"sweep its own knob ({own} A,B,...)")
        return knob, values, [f"{_flag(knob)} {','.join(f'{x:g}' for x in values)} sweeps an option of --method "
                              f"{', '.join(m for m in owners if m != 'orw')}, not {method}; choose --method {owners[0]} or {hint}"]
    return knob, values, []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def baseline_problems(config: Any) -> list[str]:
    """Problems with the new methods' options of an ``AlignConfig`` (each names the option and the fix)."""
    p: list[str] = []
    method = config.method
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}

    def given(name: str) -> bool:
        return getattr(config, name) != defaults[name]

    for name, owners in NEW_OPTION_OWNERS.items():
        if method not in owners and given(name):
            p.append(f"{_flag(name)} is an option of --method {' and '.join(owners)}, not {method}; drop it or "
                     f"choose --method {owners[0]}")
    if method in NEW_METHODS:
        for name in ORW_ONLY + (NOT_FOR_GRPO if method == GRPO else ()):
            if given(name):
                p.append(f"{_flag(name)} is not an option of --method {method} (it belongs to ORW and its baselines); "
                         "drop it")
    # Each option's own range (group size >= 2, clip range > 0, nft-beta in (0, 1], ...) is declared on its field
    # and checked with every other option (config.field_problems); what is left depends on the method or on two
    # options together.
    b, g = config.train.batch_size, config.group_size
    if method in NEW_METHODS and _is_int(g) and g >= 2 and _is_int(b) and b >= 1 and (g > b or b % g):
        p.append(f"--group-size {g} must divide --batch-size {b} (groups share a condition and never straddle "
                 "batches); choose a divisor of the batch size")
    if method == GRPO and finite(config.sde_noise) and config.sde_noise == 0:
        p.append("--sde-noise 0 makes the sampler deterministic, with no log-probabilities for flow-grpo; "
                 "give a noise level > 0 (Flow-GRPO's is 0.7)")
    if _is_int(config.sde_window) and _is_int(config.rollout_steps) and config.sde_window > config.rollout_steps:
        p.append(f"--sde-window {config.sde_window} is longer than the --rollout-steps {config.rollout_steps} "
                 "of a rollout; give at most that many steps")
    return p
