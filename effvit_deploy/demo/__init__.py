"""Stage 3: `effvit-demo`, a Gradio page that classifies one image with every attention variant.

    from effvit_deploy.demo import build_app, launch
    app = build_app(["runs/exact", "runs/performer"], backend="auto")   # models loaded here
    launch(["runs/exact", "runs/performer"], host="127.0.0.1", port=7860)
    print(command(["runs/exact", "runs/performer"]))                   # effvit-demo runs/exact runs/performer
"""
from .app import build_app, command, example_images, launch
from .inputs import DEFAULT_MAX_PIXELS, InputError, load_image
from .predict import AUTO, Variant, load_variants

__all__ = [
    "AUTO", "DEFAULT_MAX_PIXELS", "InputError", "Variant", "build_app", "command", "example_images", "launch",
    "load_image", "load_variants",
]
