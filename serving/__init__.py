"""keras-gates inference service: the Open Inference Protocol (KServe v2) over HTTP and gRPC.

Layers, each knowing only the next one's public surface: protocol (HTTP: :mod:`.app`,
:mod:`.http_infer`, :mod:`.body`, :mod:`.codec`, :mod:`.tensors`, :mod:`.responses`) -> scheduler
(:mod:`.scheduler`, :mod:`.batcher`, :mod:`.sessions`) -> runtime (:mod:`.runtime`), the protocol
vocabulary (datatypes, shapes) in :mod:`.datatypes`. :class:`InferenceServer` (:mod:`.server`) is
the composition root: it builds the schedulers and metrics (:mod:`.metrics`) that the HTTP app
and the gRPC transport (:mod:`.grpc_server`, :mod:`.grpc_codec`), a second protocol layer, both
serve. Beside the layers: the models on disk (:mod:`.repository`) and the repository extension
that loads and unloads them (:mod:`.control`); the checks on a request's tensors
(:mod:`.validation`); the metadata and config documents (:mod:`.documents`); the one error
mapping of both transports (:mod:`.errors`); the restricted endpoint groups (:mod:`.restricted`)
and the classification extension (:mod:`.classification`). The padding rule and batch layout are
:mod:`keras_gates.signature` and :mod:`keras_gates.batching`, shared with Triton's ``model.py``.
Importing this package never imports TensorFlow, Keras or grpcio.

Example::

    from keras_gates.serving import ServerConfig, create_app
    app = create_app("model.onnx", ServerConfig())   # run with uvicorn
"""

from .app import create_app
from .errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, ServingError, Unavailable
from .repository import ModelRepository, discover
from .restricted import RestrictedApi
from .runtime import ModelRuntime, TensorInfo
from .scheduler import ModelScheduler, SchedulerConfig, SequenceControl
from .server import InferenceServer, ServerConfig

__all__ = [
    "BadRequest",
    "Forbidden",
    "InferenceServer",
    "ModelRepository",
    "ModelRuntime",
    "ModelScheduler",
    "NotFound",
    "PayloadTooLarge",
    "RestrictedApi",
    "SchedulerConfig",
    "SequenceControl",
    "ServerConfig",
    "ServingError",
    "TensorInfo",
    "Unavailable",
    "create_app",
    "discover",
]
