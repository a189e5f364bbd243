"""keras-gates inference service: the Open Inference Protocol (KServe v2) over HTTP and gRPC.

Layers, each knowing only the next one's public surface: protocol (:mod:`.app`, :mod:`.protocol`,
:mod:`.codec`) -> scheduler (:mod:`.scheduler`, :mod:`.batcher`, :mod:`.sessions`) -> runtime
(:mod:`.runtime`), the datatype tables of all three in :mod:`.datatypes`; the gRPC transport
(:mod:`.grpc_server`, :mod:`.grpc_codec`) is a second protocol layer on the same schedulers.
Importing this package never imports TensorFlow, Keras or grpcio.

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
