"""Stage 1: fine-tune a ViT with each attention mechanism and measure it (`effvit-train`).

    from effvit_deploy.train import load_config, train, train_all
    run_dir = train(load_config("train/digits.yaml", ["epochs=3"], attention="performer"), "runs/digits-performer")
    run_dirs = train_all("train/digits.yaml", "all", "runs")      # runs/digits-exact, ...

config.py (recipes), engine.py (loops), checkpoint.py (resumable state), distributed.py (DDP),
metrics.py (metrics.jsonl, progress) and run.py (the recipe, top to bottom).
"""
from .config import DEFAULTS, ConfigError, load_config
from .run import is_complete, train, train_all

__all__ = ["DEFAULTS", "ConfigError", "is_complete", "load_config", "train", "train_all"]
