"""keras-gates inference service: the Open Inference Protocol (KServe v2) over HTTP.

Layers, each knowing only the next one's public surface: protocol (:mod:`.app`, :mod:`.protocol`,
:mod:`.codec`) -> scheduler (:mod:`.scheduler`, :mod:`.batcher`, :mod:`.sessions`) -> runtime
(:mod:`.runtime`). Importing this package never imports TensorFlow or Keras.

Example::

    from keras_gates.serving import ServerConfig, create_app
    app = create_app("model.onnx", ServerConfig())   # run with uvicorn
"""

from .app import create_app
from .errors import BadRequest, NotFound, PayloadTooLarge, ServingError, Unavailable
from .protocol import ServerConfig
from .repository import ModelRepository, discover
from .runtime import ModelRuntime, TensorInfo
from .scheduler import ModelScheduler, SchedulerConfig, SequenceControl

__all__ = [
    "BadRequest",
    "ModelRepository",
    "ModelRuntime",
    "ModelScheduler",
    "NotFound",
    "PayloadTooLarge",
    "SchedulerConfig",
    "SequenceControl",
    "ServerConfig",
    "ServingError",
    "TensorInfo",
    "Unavailable",
    "create_app",
    "discover",
]
