"""Test set-up shared by the whole suite (one TensorFlow import per process)."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

import tensorflow as tf  # noqa: E402

# The serving tests' repository, server and client fixtures.
pytest_plugins = ["tests.serving_fixtures", "tests.serving_grpc"]

# Two logical CPU devices so that tf.distribute.MirroredStrategy can be tested on this machine.
# This must happen before TensorFlow initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
