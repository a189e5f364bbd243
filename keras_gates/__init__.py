"""keras-gates: Keras recurrent layers you can open up gate by gate.

>>> import keras
>>> from keras_gates import GatedLSTM
>>> model = keras.Sequential([keras.Input((20, 3)), GatedLSTM(16), keras.layers.Dense(1)])
>>> model.layers[0].get_gate_weights()["forget"]["kernel"].shape
(3, 16)
"""

from keras_gates import gates
from keras_gates.gru import GatedGRU, GatedGRUCell
from keras_gates.lstm import GatedLSTM, GatedLSTMCell
from keras_gates.version import __version__

__all__ = [
    "GatedGRU",
    "GatedGRUCell",
    "GatedLSTM",
    "GatedLSTMCell",
    "__version__",
    "gates",
]
