"""``rkserve convert``: ONNX → RKNN on a PC with rknn-toolkit2, a quantization recipe and an
accuracy gate ([docs/CONVERT.md]).

``recipe`` validates the ``convert:`` section of model.yaml (no toolkit needed); ``flow`` runs
the toolkit inside ``.venv-convert``; ``gate`` compares the quantized model with the float
one; ``report`` writes what was done; ``hybrid`` keeps chosen layers in float16; ``cli`` is
the command, re-executing itself in the converter's environment when needed.
"""

from __future__ import annotations

from .recipe import Recipe, list_images, load_recipe, parse_thresholds, show_path

__all__ = ["Recipe", "list_images", "load_recipe", "parse_thresholds", "show_path"]
