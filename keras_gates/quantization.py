"""What an exported file says of its quantization: the ``keras_gates.quantization`` metadata."""

from __future__ import annotations

import json
from typing import Any

QUANTIZATION_KEY = "keras_gates.quantization"


def quantization_mode(onnx_model: Any) -> str | None:
    """``"int8"`` for a quantized keras-gates export, else ``None`` (float32, or not ours)."""
    for prop in onnx_model.metadata_props:
        if prop.key == QUANTIZATION_KEY:
            try:
                return json.loads(prop.value).get("mode")
            except (ValueError, AttributeError):
                return None
    return None
