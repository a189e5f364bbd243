"""Every gate order in one place, and the one helper that moves between them.

Frameworks fuse the per-gate matrices of a recurrent cell side by side along the last axis, each in
its own order. keras-gates keeps one variable per gate; these constants say how to lay them out
when a fused array is needed. No other module slices gates by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The gate names users see, in keras-gates' own (the seeds') order.
LSTM_GATES = ("input", "forget", "candidate", "output")
GRU_GATES = ("update", "reset", "candidate")

# The order GatedLSTMCell fuses its gates in for computing: the sigmoid gates first, the candidate
# last (the coupled variant, which has no forget weights, drops "forget" from it).
LSTM_COMPUTE = ("input", "forget", "output", "candidate")

# Fused layouts of other frameworks.
KERAS_LSTM = ("input", "forget", "candidate", "output")  # Keras / TF / cuDNN "ifco"
ONNX_LSTM = ("input", "output", "forget", "candidate")  # ONNX LSTM W/R/B "iofc"
ONNX_LSTM_PEEPHOLES = ("input", "output", "forget")  # ONNX LSTM P "iof"
TORCH_LSTM = ("input", "forget", "candidate", "output")  # PyTorch "ifgo"
KERAS_GRU = ("update", "reset", "candidate")  # Keras "zrh"
ONNX_GRU = ("update", "reset", "candidate")  # ONNX GRU "zrh"
TORCH_GRU = ("reset", "update", "candidate")  # PyTorch "rzn"

# The per-gate parts a cell may own, with the shape of each for (input_dim, units).
PART_SHAPES = {
    "kernel": lambda input_dim, units: (input_dim, units),
    "recurrent_kernel": lambda input_dim, units: (units, units),
    "bias": lambda input_dim, units: (units,),
    "recurrent_bias": lambda input_dim, units: (units,),
    "peephole": lambda input_dim, units: (units,),
}


def split(array: Any, order: Sequence[str], axis: int = -1) -> dict[str, Any]:
    """Split a fused array (numpy, or a backend tensor) into ``{gate: block}`` by ``order``."""
    if isinstance(array, (np.ndarray, list, tuple)):
        blocks = np.split(np.asarray(array), len(order), axis=axis)
    else:
        from keras import ops

        blocks = ops.split(array, len(order), axis=axis)
    return dict(zip(order, blocks))


def fuse(per_gate: Mapping[str, Any], order: Sequence[str], axis: int = -1) -> np.ndarray:
    """Concatenate ``{gate: block}`` along ``axis`` in ``order``."""
    missing = [gate for gate in order if gate not in per_gate]
    if missing:
        raise KeyError(f"Cannot fuse gates in order {tuple(order)}: missing {missing}.")
    return np.concatenate([np.asarray(per_gate[gate]) for gate in order], axis=axis)


def reorder(array: Any, src: Sequence[str], dst: Sequence[str], axis: int = -1) -> np.ndarray:
    """Rearrange a fused array from the gate order ``src`` to the gate order ``dst``."""
    return fuse(split(array, src, axis=axis), dst, axis=axis)
