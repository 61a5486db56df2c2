"""The attention-free bound: which models get one, and the run directory that holds it.

An efficient attention mechanism can only shrink the token-mixing step. Every mechanism here
still computes the q/k/v projection and the output projection (they share timm's `qkv` and
`proj` weights), and every block still runs its LayerNorms, MLP and residuals. So the fastest
any mechanism could make a model is that model with mixing replaced by a no-op: each token keeps
its own value vector (`attention.NoTokenMixing`, registered as the reference mechanism
"attention-free"). Its latency, per backend and resolution, bounds every variant's speed-up: the
largest speed-up possible is exact / bound, and a variant achieves bound / variant of it. For
ViT-S/16 at 4,097 tokens the bound's FLOPs are ~36% of exact's, so no mechanism can exceed ~2.8x
there by FLOPs.

The bound is a benchmark subject, not a mechanism one trains. `bound_run` writes it as an
ordinary run directory beside the shape runs (`cache_dir/NAME-attention-free/`): a model card
naming "attention-free" and the source run's weights (those the bound's layers have: the
projections, norms and MLPs; a mechanism's own extra parameters are left out). From there every
stage treats it like any run: `export_run` builds and verifies its artifacts (bound to its
weights by hash, reused while current), the backends load it, the report reads its rows by
their attention name.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

from ..attention import ATTENTION_FREE, REFERENCES
from ..backends import file_sha256
from ..export import PRECISIONS, export_run
from ..runs import MODEL_CARD, load_model_card, load_run, run_name, save_model_card, save_weights, weights_path
from ..stamps import is_current, write_stamp

BOUND = ATTENTION_FREE
MARKER = "bound.json"
#: the precisions a bound is exported at when a sweep asks for them: the floating-point ones (int8
#: artifacts are calibrated on validation images, which a benchmark subject does not carry)
FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")


def bound_run(
    source: Union[str, Path], cache_dir: Union[str, Path], *, formats: Sequence[str] = (),
    precisions: Sequence[str] = ("fp32",), min_res: Optional[int] = None, max_res: int = 1024, max_batch: int = 2,
) -> Path:
    """The attention-free twin of run `source` under cache_dir, with its `formats` exported at
    `precisions` by `export_run` for min_res..max_res px (min_res: the source's training size) and
    batches up to max_batch; returns its run directory.

    The directory is written once per source weights (its stamp, `bound.json`, records their
    hash, written last) and reused while they are unchanged; export reuses artifacts the same way.
    Raises ValueError for a source that is itself a reference, and what `export_run` raises.
    """
    source, cache_dir = Path(source), Path(cache_dir)
    card = load_model_card(source)
    if card.attention in REFERENCES:
        raise ValueError(f"{source} is already a reference run ({card.attention}): give the run it was made from")
    run_dir = cache_dir / f"{run_name(source)}-{BOUND}"
    weights = run_dir / "checkpoints" / "best.safetensors"
    stamp = {"source": str(source.resolve()), "source_weights_sha256": file_sha256(weights_path(source)),
             "attention": BOUND}
    if not is_current(run_dir / MARKER, stamp, outputs=(run_dir / MODEL_CARD, weights)):
        bound = replace(card, attention=BOUND, attention_kwargs={}, data={}, data_counts={})
        model, state = bound.build(), load_run(source)[0].state_dict()
        model.load_state_dict({k: state[k] for k in model.state_dict()}, strict=True)
        save_weights(model, weights)
        save_model_card(run_dir, bound)
        write_stamp(run_dir / MARKER, stamp)
    if formats:
        export_run(run_dir, formats, precisions, min_res=min_res, max_res=max_res, max_batch=max_batch, eval_limit=0)
    return run_dir


def bound_subjects(run_dirs: Sequence[Union[str, Path]], cache_dir: Path, resolutions: Sequence[int], max_batch: int,
                   *, formats: Sequence[str] = (), precisions: Sequence[str] = ("fp32",)) -> list[Path]:
    """One attention-free bound per distinct model among the runs (the exact run's weights when
    there is one, else the first run's: the bound's latency does not depend on them), exported
    for the sweep's resolutions and for each of its floating-point precisions that `formats` have
    (fp32 when none: an int8 sweep gets no bound rows); runs that are references themselves are
    skipped."""
    exported = [p for p in dict.fromkeys(precisions)
                if p in FLOAT_PRECISIONS and any(p in PRECISIONS[f] for f in formats)] or ["fp32"]
    sources: dict[str, Path] = {}
    for run_dir in run_dirs:
        card = load_model_card(run_dir)
        if card.attention in REFERENCES:
            continue
        key = json.dumps([card.model, card.model_kwargs, card.num_classes, card.img_size], sort_keys=True)
        if key not in sources or card.attention == "exact":
            sources[key] = Path(run_dir)
    return [bound_run(src, cache_dir, formats=formats, precisions=exported, min_res=min(resolutions),
                      max_res=max(resolutions), max_batch=max(max_batch, 2)) for src in sources.values()]
