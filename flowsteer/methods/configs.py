"""The methods' settings: pretraining, reward fine-tuning (align) and gradual fine-tuning (adapt).

Torch-free, so that ``flowsteer --help`` answers at once; every field is also a command-line option
(:func:`flowsteer.config.option`).  Everything here is saved in the run's ``config.json`` (``settings``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import (ADAPT_METHODS, ALIGN_DEFAULT_ALPHA, ALIGN_DEFAULT_TAU, ALIGN_METHODS, COUPLINGS, SCHEDULES,
                      SOLVERS, TIME_SAMPLERS, TrainConfig, adapt_train_defaults, align_train_defaults, check_choice,
                      field_problems, option)
from ..schedules import TemperatureSchedule, schedule_problems
from .baseline_options import baseline_problems

BASE_HELP = ("the pretrained run folder (also the reference model), or diffusers:DIR (a saved diffusers UNet2DModel or "
             "Stable Diffusion 3 pipeline; extra: diffusers)")
PROMPT_HELP = "the text that conditions a text-to-image base (an SD3 pipeline), encoded once by its own encoders"
INIT_LORA_HELP = ("start the LoRA adapters from this file instead of zeros: a diffusers LoRA .safetensors file (or a "
                  "folder holding pytorch_lora_weights.safetensors), a peft adapter folder or a flowsteer LoRA run; "
                  "its rank and alpha are used (--lora-rank / --lora-alpha may only repeat them)")
LORA_RANK_HELP = ("train rank-R LoRA adapters (peft) instead of every weight; the reference is the same network with "
                  "its adapters disabled (0 = full fine-tuning)")


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (conditional flow matching on data)."""

    data: str = option("", required=True, metavar="NAME|PATH",
                       help="moons, 8gaussians, checkerboard, circles, swissroll, digits[:0,2,4], a .npy/.npz file or "
                            "a folder of PNG/JPEG images")
    model: str = option("auto", metavar="KIND",
                        help="network: auto (= mlp, fast on CPU), mlp, unet (images), diffusers:DIR (a saved diffusers "
                             "UNet2DModel; extra: diffusers) or module:pkg.mod:Class (your net(t, x))")
    width: int | None = option(None, ge=1, help="hidden width (mlp) or base channels (unet)")
    sigma: float = option(0.0, ge=0, help="0 = straight paths and ODE sampling; > 0 = Brownian bridge and SDE sampling")
    coupling: str = option("independent", choices=COUPLINGS, help="pairing of noise and data in a minibatch")
    time_sampler: str = option("uniform", choices=TIME_SAMPLERS, help="distribution of training times")
    conditional: bool = option(False, help="train a class-conditional model (needs labels)")
    label_dropout: float = option(0.1, ge=0, lt=1, help="share of labels replaced by the null class while training a conditional "
                                            "model (so it also samples unconditionally)")
    normalize: str = option("auto", choices=("auto", "standardize", "none"),
                            help="auto: standardise vectors, keep images in [-1, 1]")
    train: TrainConfig = option(factory=TrainConfig, help="optimisation")

    def validate(self) -> list[str]:
        p = self.train.validate() + field_problems(self, nested=False)
        check_choice(p, "coupling", self.coupling, COUPLINGS)
        check_choice(p, "time-sampler", self.time_sampler, TIME_SAMPLERS)
        check_choice(p, "normalize", self.normalize, ("auto", "standardize", "none"))
        return p


@dataclass
class FineTuneStart:
    """What a fine-tuning run starts from: the base, the prompt of a text-to-image base, and LoRA adapters."""

    base: str = option("", required=True, metavar="RUN_DIR", help=BASE_HELP)
    prompt: str | None = option(None, metavar="TEXT", help=PROMPT_HELP)
    lora_rank: int = option(0, metavar="R", ge=0, help=LORA_RANK_HELP)
    lora_alpha: float | None = option(None, metavar="A", gt=0, help="LoRA scale: B A is multiplied by A / R (default: R)")
    init_lora: str | None = option(None, metavar="FILE_OR_DIR", help=INIT_LORA_HELP)

    def start_problems(self) -> list[str]:
        p = []
        if self.init_lora is not None and not str(self.init_lora).strip():
            p.append("--init-lora is empty; pass a LoRA file or folder, or drop it")
        return p


@dataclass
class AlignConfig(FineTuneStart):
    """Settings of a reward fine-tuning run (ORW-CFM-W2 and its baselines; see :mod:`flowsteer.methods.orw`)."""

    reward: Any = option("", required=True, metavar="SPEC",
                         help="even-digits, digits:0,2,4, jpeg-compressibility, jpeg-incompressibility, gaussian-modes:0,3,5, "
                              "target:FILE.npy, "
                              "clip:PROMPT[;contrast=TEXT][;model=DIR|HUB_ID] (extra: clip), python:MODULE:FUNCTION, "
                              "python:FILE.py:FUNCTION, or a weighted sum 0.5*A+0.5*B (in Python: also a callable)")
    method: str = option("orw-w2", choices=ALIGN_METHODS,
                         help="orw-w2, orw (alpha = 0), rwr (offline reward-weighted CFM), raft (top fraction), "
                              "flow-grpo (Flow-GRPO: SDE log-probabilities, clipped ratio), nft (DiffusionNFT)")
    alpha: float = option(ALIGN_DEFAULT_ALPHA, listed=True, metavar="A[,A...]", ge=0,
                          help="weight of the W2 term; larger keeps the model closer to the base and more diverse, "
                               "smaller chases the reward; a list like 0,0.1,0.3,1 runs a sweep")
    tau: float = option(ALIGN_DEFAULT_TAU, gt=0, on_resume="apply", help="inverse temperature of the weights exp(tau*r)")
    refresh_every: int = option(50, ge=1, on_resume="apply", help="K: steps between refreshes of the sampling policy")
    target_beta: float | None = option(
        None, metavar="BETA", gt=0,
        help="aim ORW without the W2 term at the KL-regularised optimum q0 exp(r/BETA) and stop there: by Theorem 2, "
             "N phases of K = --refresh-every steps give q0 exp(N tau r), so with N = 1/(BETA tau) (a whole number) "
             "the policy is copied at step 0, refreshed at K, 2K, ..., (N-1)K and then kept; --steps must be at "
             "least N K (needs --method orw).  q0 is the model the run starts from: --base, with --init-lora's "
             "adapter when given; a run started from such a run tilts again, so the inverse betas add up")
    anchor_share: float = option(
        0.0, metavar="RHO", ge=0, lt=1,
        help="with --target-beta: a share RHO of each batch comes from a fixed set of --rwr-samples samples of q0, "
             "weighted by exp(n tau r) in phase n, so that each phase fits (1-RHO) q_{n-1} exp(tau r) + RHO q0 "
             "exp(n tau r); both equal Theorem 2's q0 exp(n tau r), but the second holds the policy's fitting errors "
             "from adding up over the phases (its mode shares drift otherwise); the anchor part's effective sample "
             "size is logged as anchor_ess")
    rollout_pool: int = option(
        0, metavar="P", ge=0,
        help="orw-w2, orw, raft: at each refresh draw P samples from the sampling policy, and take every step's "
             "policy samples from them (with replacement) until the next refresh, as DDPO reuses a round of "
             "rollouts for several updates; the policy is frozen between refreshes, so each batch follows the same "
             "law, though a phase's batches share at most P samples; each process draws its own P; 0 rolls out "
             "afresh every step")
    rollout_solver: str = option(
        "heun", choices=SOLVERS, on_resume="apply",
        help="solver of the rollouts: each phase fits the rollouts' law, so a sampler's error compounds once per "
             "refresh (10 Euler steps shrink a Gaussian's variance 23 %% in the first refresh, 10 Heun steps 0.13 %%)")
    rollout_steps: int = option(10, ge=1, on_resume="apply", help="solver steps of each rollout")
    weights: str = option("mean", choices=("mean", "none"),
                          help="mean: w/mean(w), so alpha means the same for any reward scale; none: raw exp(tau*r)")
    standardize_reward: bool = option(False, help="weight by the batch-standardised reward")
    coupling: str = option("independent", choices=COUPLINGS, help="noise-sample pairing (weights follow it)")
    raft_fraction: float = option(0.25, gt=0, le=1, help="share of each batch RAFT keeps")
    rwr_samples: int = option(4096, ge=1, help="size of RWR's fixed sample set (and of --anchor-share's)")
    w2: bool = option(False, help="add the W2 term to --method rwr or raft")
    w2_budget: float | None = option(None, metavar="EPS", gt=0,
                                     help="adapt alpha by dual ascent so that the W2-bound term stays <= EPS")
    dual_lr: float = option(0.02, gt=0, on_resume="apply", help="step of the dual ascent on alpha")
    misaligned_weights: bool = option(False, help="do not re-order the weights with an OT re-pairing: reproduces the "
                                                  "released code's bug, for comparison only")
    reward_timeout: float | None = option(None, metavar="SECONDS", gt=0, on_resume="apply",
                                          help="fail with a clear message when one reward call takes longer")
    on_bad_reward: str = option("stop", choices=("stop", "skip"), on_resume="apply", help="stop on a NaN/inf reward or skip those samples")
    # --- issue 20: Flow-GRPO and DiffusionNFT (method-specific checks in methods/baseline_options.py)
    group_size: int = option(8, metavar="G", ge=2, help="flow-grpo, nft: samples per group sharing a class label; "
                                                         "rewards are standardised within a group (the whole batch "
                                                         "where no label)")
    clip_range: float = option(0.01, metavar="EPS", gt=0, help="flow-grpo: the importance ratio is clipped to "
                                                               "[1-EPS, 1+EPS]")
    kl_beta: float = option(0.0, listed=True, metavar="BETA[,BETA...]", ge=0,
                            help="flow-grpo: weight of the KL of the policy's SDE steps to the reference's; a list "
                                 "like 0,0.004,0.04 runs a sweep")
    sde_noise: float = option(0.7, metavar="A", ge=0, help="flow-grpo: noise level of the SDE sampler, "
                                                           "g(t) = A sqrt((1-t)/t)")
    sde_window: int = option(0, metavar="W", ge=0, help="flow-grpo: only W consecutive steps (random start per round) "
                                                        "are stochastic and trained; 0 = every step")
    rollout_updates: int = option(2, metavar="U", ge=1, help="flow-grpo: optimiser steps on each round of rollouts")
    nft_beta: float = option(1.0, listed=True, metavar="BETA[,BETA...]", gt=0, le=1,
                             help="nft: v+ = (1-BETA) v_old + BETA v, v- = (1+BETA) v_old - BETA v; in (0, 1]; a list "
                                  "like 0.1,0.5,1 runs a sweep")
    nft_old_decay: float = option(0.0, metavar="D", ge=0, lt=1,
                                  help="nft: each refresh sets theta_old <- D theta_old + (1-D) theta (DiffusionNFT's "
                                       "soft update); 0 copies theta")
    nft_adaptive_weight: bool = option(False, help="nft: divide each sample's squared data-prediction error by its own "
                                                   "mean absolute error, as DiffusionNFT's released code does, so the "
                                                   "gradient stays bounded")
    eval_every: int = option(250, ge=0, on_resume="apply", help="steps between evaluations")
    eval_samples: int = option(512, ge=2, on_resume="apply", help="samples per evaluation")
    eval_solver: str = option("heun", choices=SOLVERS, on_resume="apply", help="solver of the evaluation samples")
    eval_steps: int = option(25, ge=1, on_resume="apply", help="solver steps of the evaluation samples")
    train: TrainConfig = option(factory=align_train_defaults, help="optimisation")

    @property
    def target_refreshes(self) -> int | None:
        """N of ``target_beta`` (``round(1 / (beta tau))``; None without a target): the phases, each fitting
        ``q_{n-1} exp(tau r)``, whose product is ``q0 exp(N tau r) = q0 exp(r / beta)``."""
        return None if self.target_beta is None else max(1, round(1.0 / (self.target_beta * self.tau)))

    @property
    def anchor_size(self) -> int:
        """Samples of each batch drawn from the anchor set of q0 (``round(anchor_share * batch_size)``; 0: none)."""
        return round(self.anchor_share * self.train.batch_size)

    def anchor_size_problem(self, batch: str = "--batch-size") -> str | None:
        """Why ``anchor_size`` is not 1 to B - 1 of the batch (``train.batch_size``: the run's, or one process's,
        which ``batch`` names), or None."""
        b = self.train.batch_size
        if self.anchor_share > 0 and not 1 <= self.anchor_size <= b - 1:
            return (f"--anchor-share {self.anchor_share:g} of {batch} {b} gives {self.anchor_size} anchor samples per "
                    f"batch; it must give 1 to {b - 1}")
        return None

    def phase_at(self, step: int) -> int:
        """The phase n (1..N) that ``step`` trains in with ``target_beta``: it fits ``q_{n-1} exp(tau r)``, which
        Theorem 2 makes ``q0 exp(n tau r)``; after the N-th phase (the policy kept) it stays N."""
        n = self.target_refreshes
        return min(step // self.refresh_every + 1, n) if n is not None else 1

    def last_refresh(self, step: int) -> int:
        """The step of the last refresh at or before ``step``: the sampling policy of ``step``'s batch is the
        model as it was then (see :meth:`refreshes_at`)."""
        at = step - step % self.refresh_every
        n = self.target_refreshes
        return at if n is None else min(at, (n - 1) * self.refresh_every)

    def refreshes_at(self, step: int) -> bool:
        """Whether the sampling policy is refreshed before ``step`` (step 0 copies the base's weights): every
        ``refresh_every`` steps, and with ``target_beta`` only for the first N phases."""
        if step % self.refresh_every:
            return False
        n = self.target_refreshes
        return n is None or step < n * self.refresh_every

    @classmethod
    def resume_refused(cls, saved: dict[str, Any]) -> dict[str, str]:
        """Settings a resume may not change for this saved run: with a target beta, tau and K lay out the phases."""
        if saved.get("target_beta") is None:
            return {}
        why = "--target-beta laid the run's N = 1/(beta tau) phases out with them; start a new run to change them"
        return {"tau": why, "refresh_every": why}

    def _target_problems(self) -> list[str]:
        if self.target_beta is None:
            return ["--anchor-share anchors Theorem 2's phases to q0; it needs --target-beta"] \
                if self.anchor_share > 0 else []
        if self.effective_alpha != 0 or self.w2_budget is not None or self.method not in ("orw", "orw-w2"):
            return [("--target-beta plans the refreshes of ORW's online policy without the W2 term (Theorem 2); "
                     "use it with --method orw")]
        if self.standardize_reward or self.misaligned_weights:
            flag = "--standardize-reward" if self.standardize_reward else "--misaligned-weights"
            return [f"--target-beta needs the weights exp(tau r) of Theorem 2, which {flag} changes; drop {flag}"]
        if self.anchor_share > 0:
            if self.weights != "mean":
                return ["--anchor-share mixes two weighted samples, each normalised by its own mean; drop --weights none"]
            if self.init_lora is not None:
                return ["--anchor-share draws q0 from the base, which --init-lora's adapter changes; drop one of them"]
            if (problem := self.anchor_size_problem()) is not None:
                return [problem]
        product = self.target_beta * self.tau
        if not product > 0 or 1.0 / product > 1e6:
            return [f"--target-beta {self.target_beta:g} with --tau {self.tau:g} asks for more than a million phases; "
                    "raise --target-beta or --tau"]
        exact = 1.0 / product
        n = self.target_refreshes
        # a tau written to 6 digits (as suggested below) is within 5e-7 relative, so within 0.01 of N up to 10^4
        if abs(exact - n) > min(1e-3 * exact, 0.01):
            whole = sorted({max(1, math.floor(exact)), math.floor(exact) + 1}, reverse=True)
            fixes = " or ".join(f"--tau {1 / (self.target_beta * k):.6g} (N = {k})" for k in whole)
            return [(f"--target-beta {self.target_beta:g} with --tau {self.tau:g} asks for N = 1/(beta tau) = "
                     f"{exact:.3g} phases, not a whole number; use {fixes}")]
        if self.train.steps < n * self.refresh_every:
            return [(f"--target-beta needs N = {n} phases of --refresh-every {self.refresh_every} steps, so --steps "
                     f"must be at least {n * self.refresh_every} (it is {self.train.steps}); raise --steps or lower "
                     "--refresh-every")]
        return []

    @property
    def effective_alpha(self) -> float:
        """The W2 weight in use: 0 for ``orw``, and for ``rwr``/``raft`` without ``w2`` or a budget."""
        if self.method == "orw" or (self.method in ("rwr", "raft") and not self.w2 and self.w2_budget is None):
            return 0.0
        return float(self.alpha)

    def validate(self) -> list[str]:
        p = self.train.validate() + field_problems(self, nested=False)
        check_choice(p, "method", self.method, ALIGN_METHODS)
        if self.method == "orw" and self.alpha not in (0, ALIGN_DEFAULT_ALPHA):
            p.append("--method orw is ORW-CFM without the W2 term (alpha = 0); use --method orw-w2 to set --alpha")
        check_choice(p, "rollout-solver", self.rollout_solver, SOLVERS)
        check_choice(p, "eval-solver", self.eval_solver, SOLVERS)
        check_choice(p, "weights", self.weights, ("mean", "none"))
        check_choice(p, "coupling", self.coupling, COUPLINGS)
        if not p and self.rwr_samples < self.train.batch_size:
            p.append(f"--rwr-samples ({self.rwr_samples}) must be >= --batch-size ({self.train.batch_size})")
        if not p and self.rollout_pool and self.method == "rwr":
            p.append("--rollout-pool reuses the online policy's rollouts; --method rwr trains on its fixed set of "
                     "--rwr-samples instead: drop --rollout-pool")
        elif not p and 0 < self.rollout_pool < self.train.batch_size:
            p.append(f"--rollout-pool ({self.rollout_pool}) must be >= --batch-size ({self.train.batch_size})")
        if self.w2_budget is not None and self.method == "orw":
            p.append("--w2-budget adapts the W2 term's alpha; use it with --method orw-w2 (or rwr/raft)")
        check_choice(p, "on-bad-reward", self.on_bad_reward, ("stop", "skip"))
        p += self.start_problems()
        p += baseline_problems(self)
        if not p:
            p += self._target_problems()
        return p


@dataclass
class AdaptConfig(FineTuneStart):
    """Settings of a GFT / SFT run (see :mod:`flowsteer.methods.gft`)."""

    # options that --resume refuses to change although their field says on_resume="apply"
    RESUME_REFUSED: ClassVar[dict[str, str]] = {"steps": "the temperature schedule is laid out over --steps"}

    base: str = option("", required=True, metavar="RUN_DIR", help="the pretrained run folder (v_pre), or diffusers:DIR")
    target: str = option("", required=True, metavar="NAME|PATH",
                         help="target samples: a data set name (e.g. moons, digits:5-9) or a file")
    method: str = option("gft", choices=ADAPT_METHODS, help="gft or sft (tau = 0 throughout)")
    schedule: str = option("geometric", choices=SCHEDULES, help="temperature schedule")
    tau0: float = option(10.0, ge=0, help="temperature of the first stage")
    stages: int = option(4, ge=1, help="stages with tau > 0 before the final tau = 0 phase")
    final_fraction: float = option(0.25, ge=0, lt=1, help="share of the steps at tau = 0")
    divide: bool = option(True, flag="--no-divide", help="do not divide the loss by 1 + tau")
    coupling: str = option("ot", choices=COUPLINGS,
                           help="noise-target pairing; default ot (minibatch optimal transport, solved on the host): "
                                "in docs/results.md it carries nearly all of the shorter paths and few-step quality, "
                                "GFT or SFT alike")
    sigma: float | None = option(None, ge=0,
                                 help="diffusion of a stochastic flow; must equal the base's (default: the base's)")
    n_target: int | None = option(None, ge=1, help="use only N target samples (the limited-data regime)")
    eval_every: int = option(500, ge=0, on_resume="apply", help="steps between evaluations")
    eval_samples: int = option(1000, ge=2, on_resume="apply", help="samples per evaluation")
    eval_nfes: tuple[int, ...] = option((1, 2, 4, 8, 16, 50), listed=True, metavar="K[,K...]", ge=1,
                                        help="Euler step counts each evaluation samples with")
    train: TrainConfig = option(factory=adapt_train_defaults, help="optimisation")

    def temperature(self) -> TemperatureSchedule:
        """The run's temperature schedule (``sft``: tau = 0 throughout)."""
        if self.method == "sft":
            return TemperatureSchedule("constant", 0.0, 1, self.train.steps, 0.0)
        return TemperatureSchedule(self.schedule, self.tau0, self.stages, self.train.steps, self.final_fraction)

    def validate(self) -> list[str]:
        p = self.train.validate() + field_problems(self, nested=False)
        check_choice(p, "method", self.method, ADAPT_METHODS)
        check_choice(p, "coupling", self.coupling, COUPLINGS)
        if self.method == "gft" and not p:  # the schedule's own checks need valid numbers
            p += schedule_problems(self.schedule, self.tau0, self.stages, self.train.steps, self.final_fraction)
        p += self.start_problems()
        return p
