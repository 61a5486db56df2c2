"""The main job (`make demo`): the attention-swap study, in miniature, on bundled data.

Take a ViT trained with exact attention, swap in each mechanism, fine-tune it with the same
budget (exact included, as the control) and compare accuracy, time, memory and FLOPs as the
resolution grows, on cluttered digits (one handwritten digit to find among fragments of others,
at a fixed pixel scale, so a larger canvas is a larger scene with the same per-patch content):

    1. pretrain   the exact ViT from scratch, cheaply on a small canvas, then at the study
                  resolution (the profile's pretrain recipes): the source model
    2. fine-tune  every mechanism from it at the same resolution (init_from): zero-shot swap
                  accuracy (epoch 0) and fine-tuned accuracy
    3. evaluate   each fine-tuned model at the study resolution and larger ones, no retraining:
                  top-1 with a 95% Wilson interval on the whole validation split, and McNemar's
                  paired test against exact attention on the same images (effvit_deploy.evaluation)
    4. export     each fine-tuned run to ONNX fp32, fp16 and INT8, verified against PyTorch
    5. bench      latency and memory per resolution, PyTorch and ONNX Runtime, up to 4,096+
                  tokens; the report (Pareto front, recommendations) takes its top-1 from stage 3
    6. error      each approximation's error vs exact attention on the study's exact model

Profiles: `cpu` (a 4-block, 96-wide ViT with 8-px patches at 128 px = 256 tokens; fits the
2-core budget of `make demo`) and `gpu` (ViT-S/16-sized: 12 blocks, 384 wide, 8-px patches at
256 px = 1,024 tokens, bf16 autocast, more data and epochs), chosen by `--profile auto` from
whether CUDA is visible. Same stages, same outputs.

A second run reuses what is built, and rebuilds a stage whose inputs changed: a run whose
recipe or options differ from its config.yaml is retrained, and the evaluation and benchmark
are measured again when the runs or the resolutions differ from those they recorded. `--redo`
rebuilds everything. The study table (report/study.md, .json) records the command, machine,
git commit and the wall time of every stage.

    python -m effvit_deploy.pipeline [--out runs] [--profile auto|cpu|gpu] [--redo]

    run.py     the profiles and the six stages, and what each one reuses
    render.py  the study's tables (report/study.md, .json) and the README's
The command line is `effvit_deploy.cli.study`.
"""
from .render import paired_tests, readme_table, render_study, study_rows, write_study
from .run import COMMAND, PROFILES, Profile, Study, accuracy_at, choose_profile, evaluate, run, train_current

__all__ = [
    "COMMAND", "PROFILES", "Profile", "Study", "accuracy_at", "choose_profile", "evaluate", "paired_tests",
    "readme_table", "render_study", "run", "study_rows", "train_current", "write_study",
]
