"""The bad-input table of docs/bad_inputs.md: every case is run through the CLI here.

Each case must exit non-zero with exactly one stderr line containing its message and no traceback,
and must leave every file that existed before byte-for-byte unchanged (existing runs, outputs,
data).  ``python tests/test_bad_inputs.py`` prints the table with the messages as they are now.

The cases run ``flowsteer.cli.main`` in this process (``conftest.cli``: the same exit status, stdout and
stderr - Python and file-descriptor level - without an interpreter start-up per case);
``test_a_bad_input_through_the_real_entry_point`` runs one case through ``python -m flowsteer``.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT, cli, run_cli  # noqa: E402

# (id, what is wrong, argv with {ws} for the workspace, exit status, a fragment of the message)
CASES = [
    ("unknown-data", "an unknown data set name", "pretrain --data nope --out {ws}/new", 2, "unknown data set 'nope'"),
    ("missing-file", "a data file that does not exist", "pretrain --data {ws}/missing.npy --out {ws}/new", 2,
     "does not exist"),
    ("nan-data", "NaN in the data", "pretrain --data {ws}/nan.npy --out {ws}/new", 2, "NaN"),
    ("1d-array", "a 1-D array", "pretrain --data {ws}/flat.npy --out {ws}/new", 2, "1 dimension(s)"),
    ("mixed-images", "images of different sizes in a folder", "pretrain --data {ws}/mixed --out {ws}/new", 2,
     "different sizes"),
    ("out-exists", "--out holds a finished run and --resume is missing", "pretrain --data moons --out {ws}/run", 2,
     "already holds a run"),
    ("resume-nothing", "--resume on a folder with no checkpoint", "pretrain --data moons --out {ws}/empty --resume", 2,
     "no checkpoint to resume from"),
    ("resume-missing-ckpt", "--resume names a checkpoint that does not exist",
     "pretrain --data moons --out {ws}/run --resume checkpoint-7", 2, "no such checkpoint"),
    ("batch-too-big", "--batch-size larger than the data", "pretrain --data {ws}/small.npy --batch-size 64 --out {ws}/new",
     2, "larger than the 36 training samples"),
    ("many-problems", "several bad options at once (all are listed)",
     "align --base {ws}/run --reward target:1,0 --alpha -1 --tau 0 --steps 0 --out {ws}/new", 2, "3 problems:"),
    ("stages-dont-fit", "a GFT stage count that does not fit the steps",
     "adapt --base {ws}/run --target moons --stages 50 --steps 20 --batch-size 32 --out {ws}/new", 2, "stages"),
    ("nfe-zero", "zero solver steps", "sample --model {ws}/run --n 10 --steps 0 --out {ws}/existing.npy", 2,
     "--steps"),
    ("yaml-unknown-key", "a YAML config with an unknown option", "pretrain --config {ws}/bad_key.yaml --out {ws}/new", 2,
     "unknown option(s) colour"),
    ("yaml-syntax", "a YAML config that is not valid YAML", "pretrain --config {ws}/broken.yaml --out {ws}/new", 2,
     "not valid YAML"),
    ("not-a-run", "--model is a folder that is not a run", "sample --model {ws}/mixed --n 10 --out {ws}/existing.npy", 2,
     "not a flowsteer run"),
    ("truncated-weights", "a run whose model.safetensors is truncated",
     "sample --model {ws}/truncated --n 10 --out {ws}/existing.npy", 2, "damaged"),
    ("old-format", "a run folder from an incompatible format version",
     "sample --model {ws}/future --n 10 --out {ws}/existing.npy", 2, "run format 99"),
    ("corrupt-checkpoint", "--resume from a checkpoint whose trainer state is corrupted",
     "pretrain --data moons --steps 400 --out {ws}/corrupt --resume", 2, "cannot read the checkpoint"),
    ("reward-raises", "a reward function that raises",
     "align --base {ws}/run --reward python:{ws}/rewards.py:raising --quiet --steps 3 --batch-size 16 --out {ws}/new", 2,
     "raised ZeroDivisionError"),
    ("reward-wrong-length", "a reward that returns the wrong number of values",
     "align --base {ws}/run --reward python:{ws}/rewards.py:short --quiet --steps 3 --batch-size 16 --out {ws}/new", 2,
     "one number per sample"),
    ("reward-nan", "a reward that returns NaN",
     "align --base {ws}/run --reward python:{ws}/rewards.py:nan --quiet --steps 3 --batch-size 16 --out {ws}/new", 2,
     "--on-bad-reward skip"),
    ("reward-timeout", "a reward slower than --reward-timeout",
     "align --base {ws}/run --reward python:{ws}/rewards.py:slow --quiet --reward-timeout 0.3 --steps 3 --batch-size 16 "
     "--out {ws}/new", 2, "took longer than --reward-timeout"),
    ("unknown-reward", "an unknown reward spec", "align --base {ws}/run --reward nope --out {ws}/new", 2, "nope"),
    ("target-shape", "an adapt target whose dimension differs from the base model's",
     "adapt --base {ws}/run --target digits --out {ws}/new", 2, "shape (1, 8, 8)"),
    ("json-extension", "evaluate --json without .json", "evaluate --model {ws}/run --json {ws}/existing.npy", 2, ".json"),
    ("diffusers-missing", "--base diffusers:DIR where DIR does not exist",
     "align --base diffusers:{ws}/nowhere --reward even-digits --out {ws}/new", 2, "no such folder"),
    ("diffusers-not-a-model", "--base diffusers:DIR on a folder that is no diffusers model",
     "align --base diffusers:{ws}/mixed --reward even-digits --out {ws}/new", 2, "no model_index.json or config.json"),
    ("prompt-on-a-run", "--prompt for a base that is not text-conditioned",
     "align --base {ws}/run --prompt cat --reward target:1,0 --out {ws}/new", 2, "drop it for this base"),
    ("lora-rank-negative", "a negative --lora-rank",
     "align --base {ws}/run --reward target:1,0 --lora-rank -2 --out {ws}/new", 2, "--lora-rank must be >= 0"),
    ("clip-model-missing", "a CLIP reward whose model folder does not exist",
     "align --base {ws}/run --reward clip:a;model={ws}/noclip --out {ws}/new", 2, "cannot load the CLIP model"),
    ("export-not-lora", "export of a run that trained flowsteer's own network", "export {ws}/run --out {ws}/new", 2,
     "flowsteer's own 'mlp' network"),
    ("export-missing-run", "export of a run folder that does not exist", "export {ws}/nowhere --out {ws}/new", 2,
     "does not exist"),
    ("export-out-busy", "export --out that holds other files", "export {ws}/run --out {ws}/mixed", 2,
     "already holds files"),
    ("init-lora-mixed-ranks", "--init-lora whose layers have different ranks",
     "align --base {ws}/run --reward target:1,0 --init-lora {ws}/mixed_ranks.safetensors --out {ws}/new", 2,
     "different ranks (2, 4)"),
    ("init-lora-unknown-key", "--init-lora with a key that is no LoRA weight",
     "align --base {ws}/run --reward target:1,0 --init-lora {ws}/unknown_key.safetensors --out {ws}/new", 2,
     "unknown key 'transformer.transformer_blocks.0.attn.to_q.alpha'"),
    # --- issue 14: data (labels, image folders, unreadable YAML, float32 overflow)
    ("npz-label-negative", "an .npz label below 0", "pretrain --data {ws}/labels_negative.npz --out {ws}/new", 2,
     "label -1 at row 5 is negative"),
    ("npz-label-huge", "an .npz label far beyond the number of samples",
     "pretrain --data {ws}/labels_huge.npz --out {ws}/new", 2, "label 1000000000000 at row 2 is out of range"),
    ("npz-label-uint64", "an unsigned .npz label that int64 would wrap to a negative number",
     "pretrain --data {ws}/labels_uint64.npz --out {ws}/new", 2, "label 9223372036854775813 at row 0 is out of range"),
    ("npz-label-float", "float .npz labels", "pretrain --data {ws}/labels_float.npz --out {ws}/new", 2,
     "labels have dtype float64"),
    ("npz-label-text", "text .npz labels", "pretrain --data {ws}/labels_text.npz --out {ws}/new", 2,
     "map each class to a whole number"),
    ("npz-label-objects", "Python objects as .npz labels (None among the classes)",
     "pretrain --data {ws}/labels_objects.npz --out {ws}/new", 2, "save numbers, not Python objects"),
    ("npz-label-length", "fewer .npz labels than samples", "pretrain --data {ws}/labels_short.npz --out {ws}/new", 2,
     "labels have shape (39,) for 40 samples"),
    ("npz-label-column", "labels as a column [N, 1]", "pretrain --data {ws}/labels_column.npz --out {ws}/new", 2,
     "labels have shape (40, 1) for 40 samples"),
    ("sample-label-range", "sample --label beyond the run's classes",
     "sample --model {ws}/labelled --n 10 --label 3 --out {ws}/new.npy", 2, "--label 3 is out of range"),
    ("sample-label-negative", "a negative sample --label",
     "sample --model {ws}/labelled --n 10 --label -1 --out {ws}/new.npy", 2, "--label must be >= 0"),
    ("sample-label-huge", "a sample --label beyond int64",
     "sample --model {ws}/labelled --n 10 --label 99999999999999999999999 --out {ws}/new.npy", 2,
     "--label must fit in 64 bits"),
    ("sample-label-no-classes", "sample --label on a run without classes",
     "sample --model {ws}/run --n 10 --label 0 --out {ws}/new.npy", 2, "is not class-conditional"),
    ("folder-images-and-classes", "an image folder with images at the top and class sub-folders",
     "pretrain --data {ws}/half_classes --out {ws}/new", 2, "holds both images"),
    ("folder-empty-class", "an image folder with an empty class folder",
     "pretrain --data {ws}/empty_class --out {ws}/new", 2, "class folder has no PNG or JPEG images"),
    ("folder-nested-class", "a class folder with a folder inside",
     "pretrain --data {ws}/nested_class --out {ws}/new", 2, "class folder holds a folder (more/)"),
    ("folder-only-hidden", "an image folder whose only images are hidden",
     "pretrain --data {ws}/only_hidden --out {ws}/new", 2, "folder has no PNG or JPEG images"),
    ("folder-gif", "an image folder with a GIF among the PNGs", "pretrain --data {ws}/with_gif --out {ws}/new", 2,
     ".gif images are not read"),
    ("yaml-latin1", "a config file in Latin-1", "pretrain --config {ws}/latin1.yaml --out {ws}/new", 2,
     "not UTF-8 text (byte 0xe9"),
    ("yaml-binary", "a binary file as --config", "pretrain --config {ws}/binary.yaml --out {ws}/new", 2,
     "is a binary file"),
    ("yaml-utf16", "a config file saved as UTF-16 (PowerShell's default)",
     "pretrain --config {ws}/utf16.yaml --out {ws}/new", 2, "is UTF-16 text; save it as UTF-8"),
    ("yaml-folder", "a folder as --config", "pretrain --config {ws}/empty --out {ws}/new", 2, "is a folder"),
    ("yaml-list", "a YAML list instead of a mapping", "pretrain --config {ws}/list.yaml --out {ws}/new", 2,
     "holds a list"),
    ("yaml-scalar", "a YAML scalar instead of a mapping", "pretrain --config {ws}/scalar.yaml --out {ws}/new", 2,
     "holds text ('moons')"),
    ("yaml-mapping-value", "a mapping where a value belongs (lr: {a: 1})",
     "pretrain --config {ws}/mapping_value.yaml --out {ws}/new", 2, "option 'lr' takes one value, got a mapping"),
    ("yaml-list-value", "a list where one value belongs (steps: [1, 2])",
     "pretrain --config {ws}/list_value.yaml --out {ws}/new", 2, "option 'steps' takes one value, got a list"),
    ("yaml-nested-unknown", "an unknown key in a nested section (train: {colour: 1})",
     "pretrain --config {ws}/nested_unknown.yaml --out {ws}/new", 2, "unknown option(s) train.colour"),
    ("yaml-bad-number", "a YAML value that is not a number", "pretrain --config {ws}/bad_number.yaml --out {ws}/new",
     2, "option 'lr': 'fast' is not a number"),
    ("yaml-bad-choice", "a YAML value that is not one of the choices",
     "pretrain --config {ws}/bad_choice.yaml --out {ws}/new", 2, "option 'coupling' is 'magic'; use one of"),
    ("yaml-twice", "one option given twice (lr and train.lr)", "pretrain --config {ws}/twice.yaml --out {ws}/new", 2,
     "option lr is given twice (lr and train.lr)"),
    ("yaml-duplicate-key", "a YAML key given twice (PyYAML keeps the last silently)",
     "pretrain --config {ws}/duplicate.yaml --out {ws}/new", 2, "key 'data' is given twice (lines 1 and 3)"),
    ("float32-overflow", "a finite float64 value beyond float32", "pretrain --data {ws}/huge.npy --out {ws}/new", 2,
     "value 1e+300 at row 3 overflows float32"),
    ("float32-overflow-npz", "a finite negative float64 value beyond float32 in an .npz",
     "pretrain --data {ws}/huge.npz --out {ws}/new", 2, "value -3e+39 at row 7 overflows float32"),
    # --- issue 14: resume settings and numeric options
    ("resume-changes-width", "--resume with a --width other than the run's",
     "pretrain --out {ws}/run --resume --width 64", 2, "--resume: --width 64 differs from the run's saved value (none"),
    ("resume-other-kind", "align --resume on a pretrain run folder", "align --out {ws}/run --resume", 2,
     "not an align run"),
    ("resume-steps-behind", "--resume with --steps below the checkpoint's step",
     "pretrain --out {ws}/run --resume --steps 100", 2, "checkpoint-300 is at step 300, past --steps 100"),
    ("lr-nan", "--lr nan", "pretrain --data moons --lr nan --out {ws}/new", 2, "argument --lr: 'nan' is not a finite"),
    ("alpha-inf", "--alpha inf", "align --base {ws}/run --reward target:1,0 --alpha inf --out {ws}/new", 2,
     "argument --alpha: 'inf' is not a finite number"),
    ("dual-lr-zero", "--dual-lr 0", "align --base {ws}/run --reward target:1,0 --dual-lr 0 --out {ws}/new", 2,
     "--dual-lr must be > 0"),
    ("grad-clip-negative", "a negative --grad-clip", "pretrain --data moons --grad-clip -1 --out {ws}/new", 2,
     "--grad-clip must be >= 0"),
    ("weight-decay-inf", "--weight-decay inf", "pretrain --data moons --weight-decay inf --out {ws}/new", 2,
     "argument --weight-decay: 'inf' is not a finite number"),
    ("seed-65-bits", "a seed beyond 64 bits", "pretrain --data moons --seed 36893488147419103232 --out {ws}/new", 2,
     "--seed must be in [0, 2^63)"),
    ("sample-seed-negative", "a negative sample seed",
     "sample --model {ws}/run --n 10 --seed -1 --out {ws}/existing.npy", 2, "--seed must be in [0, 2^63)"),
    ("yaml-nan", "NaN in a YAML config", "pretrain --config {ws}/nan.yaml --out {ws}/new", 2,
     "option 'lr': 'nan' is not a finite number"),
    # --- issue 14: run-folder ownership and output files (flowsteer/ownership.py)
    ("out-is-base", "align --out is its own --base, even with --resume",
     "align --base {ws}/run --reward target:1,0 --out {ws}/run --resume", 2, "is the --base itself"),
    ("out-other-command", "align --resume into a pretrain run (the advice must not be --resume)",
     "align --base {ws}/corrupt --reward target:1,0 --out {ws}/run --resume", 2, "not an align run"),
    ("out-foreign-weights", "--out holds a model.safetensors and config.json flowsteer did not write, with --resume",
     "pretrain --data moons --out {ws}/foreign --resume", 2, "did not create"),
    ("out-foreign", "align --out is a folder of other files", "align --base {ws}/run --reward target:1,0 --out {ws}/mixed",
     2, "did not create"),
    ("out-inside-run", "--out inside another run's folder", "pretrain --data moons --out {ws}/corrupt/sub", 2,
     "lies inside a pretrain run"),
    ("out-inside-base", "--out inside the --base folder", "adapt --base {ws}/run --target moons --out {ws}/run/adapted",
     2, "lies inside the --base folder"),
    ("out-no-checkpoint", "--resume of a run killed before its first checkpoint",
     "pretrain --data moons --out {ws}/nockpt --resume", 2, "stopped before its first checkpoint"),
    ("sweep-into-run", "an align sweep into a run folder",
     "align --base {ws}/run --reward target:1,0 --alpha 0,1 --out {ws}/corrupt", 2, "not an align sweep"),
    ("sample-into-run", "sample --out would replace a run's own file",
     "sample --model {ws}/run --n 10 --out {ws}/run/checkpoint-300/model.png", 2, "lies inside a pretrain run"),
    ("sample-onto-folder", "sample --out names a folder", "sample --model {ws}/run --n 10 --out {ws}/folder.npy", 2,
     "is a folder"),
    ("evaluate-onto-config", "evaluate --json onto a run's config.json",
     "evaluate --model {ws}/run --json {ws}/run/config.json", 2, "lies inside a pretrain run"),
    ("evaluate-into-other-run", "evaluate --json into another run's evaluation.json",
     "evaluate --model {ws}/run --json {ws}/corrupt/evaluation.json", 2, "of the --model run"),
    ("report-into-run", "report --out a run folder", "report {ws}/run --out {ws}/corrupt", 2, "not a report"),
    ("report-into-foreign", "report --out a folder of other files", "report {ws}/run --out {ws}/mixed", 2,
     "did not create"),
    ("export-into-run", "export --out inside a run folder", "export {ws}/run --out {ws}/corrupt/export", 2,
     "lies inside a pretrain run"),
    # --- issue 14: untrusted rewards, align divergence
    ("reward-none", "a reward that returns None",
     "align --base {ws}/run --reward python:{ws}/rewards.py:returns_none --quiet --steps 3 --batch-size 16 "
     "--out {ws}/new", 2, "returned None"),
    ("reward-sys-exit", "a reward that calls sys.exit()",
     "align --base {ws}/run --reward python:{ws}/rewards.py:exits --quiet --steps 3 --batch-size 16 --out {ws}/new", 2,
     "called sys.exit(None)"),
    ("reward-overflow", "a reward whose float64 values overflow float32",
     "align --base {ws}/run --reward python:{ws}/rewards.py:overflows --quiet --steps 3 --batch-size 16 "
     "--out {ws}/new", 2, "beyond float32's range"),
    ("reward-meta", "a reward that returns a tensor on the meta device",
     "align --base {ws}/run --reward python:{ws}/rewards.py:on_meta --quiet --steps 3 --batch-size 16 --out {ws}/new",
     2, "meta device"),
    ("reward-all-nan-skip", "a reward that is NaN for every sample, with --on-bad-reward skip",
     "align --base {ws}/run --reward python:{ws}/rewards.py:all_nan --on-bad-reward skip --quiet --steps 3 "
     "--batch-size 16 --out {ws}/new", 2, "returned NaN or inf for all"),
    ("raw-weights-underflow", "--weights none with rewards so low that exp(tau*r) is 0 for every sample",
     "align --base {ws}/run --reward python:{ws}/rewards.py:very_low --weights none --quiet --steps 3 --batch-size 16 "
     "--out {ws}/new", 2, "underflowed to 0 for every sample"),
    ("align-explodes", "an align run whose loss explodes (--lr 10)",
     "align --base {ws}/run --reward target:1.5,0 --lr 10 --quiet --steps 200 --batch-size 64 --eval-every 0 "
     "--eval-samples 32 --out {ws}/new", 3, "the loss diverged"),
    # --- issue 20: flow-grpo and nft
    ("grpo-group-of-one", "flow-grpo with --group-size 1",
     "align --base {ws}/run --reward target:1,0 --method flow-grpo --group-size 1 --out {ws}/new", 2,
     "--group-size must be >= 2"),
    ("grpo-group-too-big", "a --group-size larger than the batch",
     "align --base {ws}/run --reward target:1,0 --method flow-grpo --group-size 128 --batch-size 64 --out {ws}/new", 2,
     "--group-size 128 must divide --batch-size 64"),
    ("grpo-group-not-dividing", "a --group-size that does not divide the batch",
     "align --base {ws}/run --reward target:1,0 --method nft --group-size 12 --batch-size 64 --out {ws}/new", 2,
     "--group-size 12 must divide --batch-size 64"),
    ("grpo-clip-zero", "--clip-range 0", "align --base {ws}/run --reward target:1,0 --method flow-grpo --clip-range 0 "
     "--out {ws}/new", 2, "--clip-range must be > 0 (a finite number; got 0.0)"),
    ("grpo-clip-negative", "a negative --clip-range", "align --base {ws}/run --reward target:1,0 --method flow-grpo "
     "--clip-range -0.2 --out {ws}/new", 2, "--clip-range must be > 0 (a finite number; got -0.2)"),
    ("grpo-noise-negative", "a negative --sde-noise", "align --base {ws}/run --reward target:1,0 --method flow-grpo "
     "--sde-noise -0.5 --out {ws}/new", 2, "--sde-noise must be >= 0 (a finite number; got -0.5)"),
    ("nft-beta-zero", "--nft-beta 0", "align --base {ws}/run --reward target:1,0 --method nft --nft-beta 0 "
     "--out {ws}/new", 2, "--nft-beta must be in (0, 1] (a finite number; got 0.0)"),
    ("nft-beta-above-one", "--nft-beta above 1", "align --base {ws}/run --reward target:1,0 --method nft --nft-beta 1.5 "
     "--out {ws}/new", 2, "--nft-beta must be in (0, 1] (a finite number; got 1.5)"),
    ("nft-option-to-orw", "an nft option given to ORW-CFM-W2", "align --base {ws}/run --reward target:1,0 "
     "--nft-beta 0.5 --out {ws}/new", 2, "--nft-beta is an option of --method nft, not orw-w2"),
    ("orw-option-to-grpo", "an ORW option given to flow-grpo", "align --base {ws}/run --reward target:1,0 "
     "--method flow-grpo --tau 2 --out {ws}/new", 2, "--tau is not an option of --method flow-grpo"),
    ("kl-beta-sweep-to-orw", "a --kl-beta sweep given to ORW-CFM-W2", "align --base {ws}/run --reward target:1,0 "
     "--kl-beta 0,0.01 --out {ws}/new", 2, "--kl-beta 0,0.01 sweeps an option of --method flow-grpo, not orw-w2"),
    ("nft-beta-sweep-to-grpo", "an --nft-beta sweep given to flow-grpo", "align --base {ws}/run --reward target:1,0 "
     "--method flow-grpo --nft-beta 0.5,1 --out {ws}/new", 2, "--nft-beta 0.5,1 sweeps an option of --method nft, "
     "not flow-grpo"),
    ("alpha-sweep-to-nft", "an --alpha sweep given to nft", "align --base {ws}/run --reward target:1,0 --method nft "
     "--alpha 0,0.3 --out {ws}/new", 2, "not nft; choose --method orw-w2 or sweep its own knob (--nft-beta A,B,...)"),
    ("sweep-value-twice", "an --alpha sweep that gives one value twice (both runs would share a folder)",
     "align --base {ws}/run --reward target:1,0 --alpha 0.1,0,0.10 --out {ws}/new", 2,
     "--alpha 0.1,0,0.1 gives 0.1 more than once (each value is one run folder); give each value once"),
    ("kl-beta-sweep-to-orw-alpha-0", "a --kl-beta sweep given to ORW-CFM (alpha = 0, which has no knob to sweep)",
     "align --base {ws}/run --reward target:1,0 --method orw --kl-beta 0,0.1 --out {ws}/new", 2,
     "not orw; choose --method flow-grpo or sweep --alpha A,B,... with --method orw-w2 (orw is its alpha = 0)"),
    ("anchor-without-target", "--anchor-share without --target-beta (it anchors Theorem 2's phases)",
     "align --base {ws}/run --reward target:1,0 --anchor-share 0.5 --out {ws}/new", 2,
     "--anchor-share anchors Theorem 2's phases to q0; it needs --target-beta"),
    ("anchor-share-rounds-to-zero", "an --anchor-share that gives no anchor sample in a batch",
     "align --base {ws}/run --reward target:1,0 --method orw --target-beta 0.1 --tau 5 --anchor-share 0.001 "
     "--batch-size 64 --out {ws}/new", 2, "--anchor-share 0.001 of --batch-size 64 gives 0 anchor samples per batch"),
    ("two-sweeps", "two knobs swept at once", "align --base {ws}/run --reward target:1,0 --method flow-grpo "
     "--kl-beta 0,0.1 --alpha 0,1 --out {ws}/new", 2, "a sweep varies one knob"),
    ("nft-beta-sweep-out-of-range", "an --nft-beta sweep with a value above 1", "align --base {ws}/run "
     "--reward target:1,0 --method nft --nft-beta 0.5,2 --out {ws}/new", 2,
     "--nft-beta must be in (0, 1] (a finite number; got 2.0)"),
    # --- issue 15: the frontier's --target-beta (Theorem 2's refresh count)
    ("target-beta-with-w2", "--target-beta with the W2 term on (the default alpha)",
     "align --base {ws}/run --reward target:1,0 --target-beta 0.1 --out {ws}/new", 2,
     "--target-beta plans the refreshes of ORW's online policy without the W2 term (Theorem 2)"),
    ("target-beta-fraction", "--target-beta whose refresh count 1/(beta tau) is not whole",
     "align --base {ws}/run --reward target:1,0 --method orw --target-beta 0.07 --out {ws}/new", 2,
     "N = 1/(beta tau) = 2.86 phases, not a whole number; use --tau 4.7619 (N = 3) or --tau 7.14286 (N = 2)"),
    ("target-beta-standardized", "--target-beta with batch-standardised rewards (not the weights of Theorem 2)",
     "align --base {ws}/run --reward target:1,0 --method orw --target-beta 0.1 --standardize-reward --out {ws}/new", 2,
     "which --standardize-reward changes; drop --standardize-reward"),
    ("target-beta-short-run", "--target-beta whose phases do not fit --steps",
     "align --base {ws}/run --reward target:1,0 --method orw --target-beta 0.05 --refresh-every 300 --steps 1000 "
     "--out {ws}/new", 2, "so --steps must be at least 1200 (it is 1000)"),
    ("target-beta-to-nft", "--target-beta given to nft",
     "align --base {ws}/run --reward target:1,0 --method nft --target-beta 0.1 --out {ws}/new", 2,
     "--target-beta"),
    # --- issue 15, session 6: --rollout-pool
    ("rollout-pool-to-rwr", "--rollout-pool given to offline RWR (it has no policy rollouts to reuse)",
     "align --base {ws}/run --reward target:1,0 --method rwr --rollout-pool 512 --out {ws}/new", 2,
     "--rollout-pool reuses the online policy's rollouts; --method rwr trains on its fixed set"),
    ("rollout-pool-below-batch", "a --rollout-pool smaller than a batch",
     "align --base {ws}/run --reward target:1,0 --rollout-pool 100 --batch-size 256 --out {ws}/new", 2,
     "--rollout-pool (100) must be >= --batch-size (256)"),
]


def _write_reward_file(path: Path) -> None:
    path.write_text(
        "import time\nimport torch\n\n"
        "def raising(x):\n    return 1 / 0\n\n"
        "def short(x):\n    return x[:-1, 0]\n\n"
        "def nan(x):\n    r = x[:, 0].clone()\n    r[0] = float('nan')\n    return r\n\n"
        "def slow(x):\n    time.sleep(3)\n    return x[:, 0]\n"
        # --- issue 14: untrusted rewards
        "\n\nimport sys\nimport numpy as np\n\n"
        "def returns_none(x):\n    return None\n\n"
        "def exits(x):\n    sys.exit()\n\n"
        "def overflows(x):\n    return np.full(x.shape[0], 1e300)\n\n"
        "def on_meta(x):\n    return torch.empty(x.shape[0], device='meta')\n\n"
        "def all_nan(x):\n    return torch.full((x.shape[0],), float('nan'))\n\n"
        "def very_low(x):\n    return torch.full((x.shape[0],), -1000.0)\n")


def _write_lora_files(ws: Path) -> None:
    """Two diffusers-format LoRA files flowsteer refuses: layers of ranks 4 and 2, and an ``alpha`` tensor."""
    import torch
    from safetensors.torch import save_file

    q, k = "transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_k"
    pair = {f"{q}.lora_A.weight": torch.zeros(4, 8), f"{q}.lora_B.weight": torch.zeros(8, 4)}
    save_file({**pair, f"{k}.lora_A.weight": torch.zeros(2, 8), f"{k}.lora_B.weight": torch.zeros(8, 2)},
              str(ws / "mixed_ranks.safetensors"))
    save_file({**pair, f"{q}.alpha": torch.tensor(4.0)}, str(ws / "unknown_key.safetensors"))


def build_workspace(ws: Path, run: Path) -> Path:
    """Everything the cases need: a good run, damaged runs, bad data, config and LoRA files, reward files."""
    from PIL import Image

    ws.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run, ws / "run")
    (ws / "empty").mkdir()
    np.save(ws / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0]] * 20, dtype=np.float32))
    np.save(ws / "flat.npy", np.arange(50, dtype=np.float32))
    np.save(ws / "small.npy", np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32))
    np.save(ws / "existing.npy", np.ones((3, 2), dtype=np.float32))
    (ws / "mixed").mkdir()
    Image.new("L", (8, 8)).save(ws / "mixed" / "a.png")
    Image.new("L", (9, 9)).save(ws / "mixed" / "b.png")
    (ws / "bad_key.yaml").write_text("data: moons\ncolour: blue\n")
    (ws / "broken.yaml").write_text("data: [moons\n")
    shutil.copytree(run, ws / "truncated")
    weights = (ws / "truncated" / "model.safetensors").read_bytes()
    (ws / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    shutil.copytree(run, ws / "future")
    cfg = json.loads((ws / "future" / "config.json").read_text())
    (ws / "future" / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    shutil.copytree(run, ws / "corrupt")
    latest = (ws / "corrupt" / "latest").read_text().strip()
    (ws / "corrupt" / latest / "trainer_state.pt").write_bytes(b"\x80\x02 not a checkpoint")
    _write_reward_file(ws / "rewards.py")
    _write_lora_files(ws)
    _write_data_cases(ws)  # issue 14: data
    # --- issue 14: resume settings and numeric options
    (ws / "nan.yaml").write_text("data: moons\nlr: .nan\n")
    # --- issue 14: run-folder ownership and output files
    from flowsteer.runs import METRICS_FILE, OWNER_FILE, WEIGHTS_FILE

    (ws / "foreign").mkdir()  # a model folder of another origin: weights and a config.json flowsteer did not write
    shutil.copy(run / WEIGHTS_FILE, ws / "foreign" / WEIGHTS_FILE)
    (ws / "foreign" / "config.json").write_text('{"_class_name": "UNet2DModel"}\n')
    (ws / "nockpt").mkdir()  # a pretrain run killed before its first checkpoint
    (ws / "nockpt" / OWNER_FILE).write_text('{"kind": "pretrain"}\n')
    (ws / "nockpt" / METRICS_FILE).write_text('{"step": 50, "kind": "train", "loss": 1.0}\n')
    for name in ("folder.npy", "folder.json"):
        (ws / name).mkdir()
        (ws / name / "keep.txt").write_text("keep\n")
    return ws


# --- issue 14: data - the workspace files of its cases
def _write_data_cases(ws: Path) -> None:
    from PIL import Image

    from flowsteer import PretrainConfig, TrainConfig, pretrain

    x = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    y = np.arange(40) % 3
    np.savez(ws / "labelled.npz", x=x, y=y)
    pretrain(PretrainConfig(data=str(ws / "labelled.npz"), conditional=True, width=8,
                            train=TrainConfig(steps=4, batch_size=8, warmup_steps=0, log_every=2)),
             ws / "labelled", progress="quiet")
    np.savez(ws / "labels_negative.npz", x=x, y=np.where(np.arange(40) == 5, -1, y))
    np.savez(ws / "labels_huge.npz", x=x, y=np.where(np.arange(40) == 2, 10**12, y))
    np.savez(ws / "labels_uint64.npz", x=x, y=np.full(40, 2**63 + 5, dtype=np.uint64))
    np.savez(ws / "labels_float.npz", x=x, y=y.astype(np.float64))
    np.savez(ws / "labels_text.npz", x=x, y=np.array(["cat", "dog"] * 20))
    np.savez(ws / "labels_objects.npz", x=x, y=np.array([0, None] * 20, dtype=object))
    np.savez(ws / "labels_short.npz", x=x, y=y[:39])
    np.savez(ws / "labels_column.npz", x=x, y=y[:, None])
    huge = x.astype(np.float64)
    huge[3, 1] = 1e300
    np.save(ws / "huge.npy", huge)
    huge = x.astype(np.float64)
    huge[7, 0] = -3e39
    np.savez(ws / "huge.npz", x=huge)

    def images(folder: Path, n: int, size: int = 4) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (size, size), color=i * 10).save(folder / f"{i}.png")

    images(ws / "half_classes", 3)
    images(ws / "half_classes" / "cat", 3)
    images(ws / "empty_class" / "cat", 3)
    (ws / "empty_class" / "dog").mkdir()
    images(ws / "nested_class" / "cat", 3)
    images(ws / "nested_class" / "cat" / "more", 2)
    images(ws / "only_hidden" / ".ipynb_checkpoints", 3)
    Image.new("L", (4, 4)).save(ws / "only_hidden" / ".hidden.png")
    (ws / "only_hidden" / "README.md").write_text("pictures\n")
    images(ws / "with_gif", 3)
    Image.new("L", (4, 4)).save(ws / "with_gif" / "extra.gif")
    (ws / "latin1.yaml").write_bytes("data: moons\n# café\n".encode("latin-1"))
    (ws / "utf16.yaml").write_text("data: moons\n", encoding="utf-16")
    (ws / "binary.yaml").write_bytes(b"data: moons\n\x00\x01\x02\xff\xfe")
    (ws / "list.yaml").write_text("- data: moons\n- steps: 10\n")
    (ws / "scalar.yaml").write_text("moons\n")
    (ws / "mapping_value.yaml").write_text("data: moons\nlr: {a: 1}\n")
    (ws / "list_value.yaml").write_text("data: moons\nsteps: [1, 2]\n")
    (ws / "nested_unknown.yaml").write_text("data: moons\ntrain:\n  lr: 0.01\n  colour: blue\n")
    (ws / "bad_number.yaml").write_text("data: moons\nlr: fast\n")
    (ws / "bad_choice.yaml").write_text("data: moons\ncoupling: magic\n")
    (ws / "twice.yaml").write_text("data: moons\nlr: 0.01\ntrain:\n  lr: 0.02\n")
    (ws / "duplicate.yaml").write_text("data: moons\nsteps: 10\ndata: circles\n")


def _digest(ws: Path) -> dict[str, str]:
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ws.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, moons_run):
    return build_workspace(tmp_path_factory.mktemp("bad") / "ws", moons_run)


def run_case(argv: str, ws: Path, *, subprocess: bool = False):
    return (run_cli if subprocess else cli)(*argv.format(ws=ws).split())


def check_case(case, workspace, *, subprocess: bool = False):
    _, _, argv, status, fragment = case
    before = _digest(workspace)
    proc = run_case(argv, workspace, subprocess=subprocess)
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("flowsteer: error: ") and fragment in lines[0], lines[0]
    after = _digest(workspace)
    changed = [f for f, h in before.items() if after.get(f) != h]
    assert not changed, f"existing files changed: {changed}"
    shutil.rmtree(workspace / "new", ignore_errors=True)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_damages_nothing(case, workspace):
    check_case(case, workspace)


def test_a_bad_input_through_the_real_entry_point(workspace):
    """One case (a bad reward: the command gets as far as training) through ``python -m flowsteer``."""
    check_case(next(c for c in CASES if c[0] == "reward-raises"), workspace, subprocess=True)


def test_the_table_in_the_docs_lists_every_case():
    doc = (ROOT / "docs" / "bad_inputs.md").read_text(encoding="utf-8")
    assert len(CASES) >= 15
    for case_id, _, _, _, fragment in CASES:
        assert f"`{case_id}`" in doc and fragment in doc, case_id


if __name__ == "__main__":  # print the docs table with the messages as they are now
    import tempfile

    from flowsteer import PretrainConfig, TrainConfig, pretrain

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "moons"
        pretrain(PretrainConfig(data="moons", train=TrainConfig(steps=300, log_every=50)), run, progress="quiet")
        ws = build_workspace(Path(tmp) / "ws", run)
        print("| case | input | command | exit | message |\n|---|---|---|---|---|")
        for case_id, what, argv, _, _ in CASES:
            proc = run_case(argv, ws)
            message = proc.stderr.strip().replace(str(ws), "WS").replace("|", "\\|")
            shown = argv.replace("{ws}", "WS").replace("|", "\\|")
            print(f"| `{case_id}` | {what} | `flowsteer {shown}` | {proc.returncode} | {message} |")
            shutil.rmtree(ws / "new", ignore_errors=True)
