"""Test set-up shared by the whole suite (one TensorFlow import per process, on that backend).

The suite runs on the TensorFlow backend; ``tests/test_backends.py`` re-runs the layer tests in
subprocesses with ``KERAS_BACKEND=jax``/``torch`` and ``KERAS_GATES_NO_TENSORFLOW=1``, under which
any import of TensorFlow fails, proving that those paths never need it.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

if os.environ.get("KERAS_GATES_NO_TENSORFLOW") == "1":
    sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError

# The serving tests' repository, server and client fixtures.
pytest_plugins = ["tests.serving_fixtures", "tests.serving_grpc"]

if os.environ["KERAS_BACKEND"] == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices so that tf.distribute.MirroredStrategy can be tested on this
    # machine. This must happen before TensorFlow initialises its devices.
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
