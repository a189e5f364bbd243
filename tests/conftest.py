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

# The serving tests' repository, server and client fixtures; the real Triton's (session-wide).
pytest_plugins = ["tests.serving_fixtures", "tests.serving_grpc", "tests.triton_fixtures"]

if os.environ["KERAS_BACKEND"] == "tensorflow":
    from keras_gates.native_logs import quiet_native_logs

    quiet_native_logs(verbose=False, modules=("tensorflow",))  # no import-time C++ log lines
    import tensorflow as tf

    # Two logical CPU devices so that tf.distribute.MirroredStrategy can be tested on this
    # machine. This must happen before TensorFlow initialises its devices.
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )


# Under ``pytest -n`` (``make test``): the tests of one module run in one worker, so a module's
# fixtures (servers, exports, the demo, a built wheel) are made once, and the two real-Triton
# modules share one worker and so one Triton (``tests/triton_fixtures.py``). The modules in
# SPREAD hold independent long tests with nothing to share and are spread test by test.
# (xdist's own ``--dist loadgroup`` marks do not group under pytest 9: xdist rewrites
# ``item._nodeid``, which pytest 9 no longer reads. Its scheduler hook does the grouping here.)
TOGETHER = {"test_triton_real": "triton", "test_triton_grpc": "triton"}
SPREAD = {"test_backends", "test_examples", "test_gradient_backends", "test_export"}


def work_unit(nodeid: str) -> str:
    """The scope a test is scheduled with: its module, its group, or (SPREAD) itself."""
    module = nodeid.split("::", 1)[0]
    name = module.rsplit("/", 1)[-1].removesuffix(".py")
    if name in SPREAD:
        return nodeid
    return TOGETHER.get(name, module)


# The longest work first, so that no worker is left alone with one at the end; the rest in
# collection order (``make test`` passes ``--no-loadscope-reorder``, which keeps this order).
FIRST = (
    "tests/test_install.py",
    "tests/test_readme.py",
    "tests/test_keras_range.py",
    "tests/test_backends.py",
    "tests/test_examples.py",
    "tests/test_triton_grpc.py",  # before test_triton_real, whose last tests load and unload
    "tests/test_triton_real.py",
    "tests/test_commands.py",
    "tests/test_gradient_backends.py",
    "tests/test_explorer.py",
    "tests/test_interop.py",
)


def pytest_collection_modifyitems(items):
    rank = {path: place for place, path in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(FIRST)))


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        """xdist's load-by-scope scheduling, with :func:`work_unit` as the scope."""

        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ModuleScheduling(config, log)
