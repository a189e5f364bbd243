"""Private Keras/TensorFlow API is used in one module only: ``keras_gates/_internals.py``.

Reads the code of ``keras_gates``, ``export`` and ``serving`` and flags ``keras.src``,
``tensorflow.core``/``tensorflow.python``, Keras' underscore attributes (every ``_name`` that a
Keras layer, model, tensor, variable, optimizer or callback has and that our own code does not
define) and ``object.__setattr__`` tricks. Also checks that every private entry point resolves on
the installed Keras (a Keras upgrade that drops one fails here, naming the version).
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("keras_gates", "export", "serving")
INTERNALS = Path("keras_gates/_internals.py")

# Modules that still reach into Keras directly, each to be switched to an `_internals` entry
# point: none left. The test fails if a listed file is already clean (so the list only shrinks)
# or if any other file uses private API.
PENDING: set[Path] = set()

_MODULE_PATTERNS = [
    (re.compile(r"\bkeras\.src\b"), "keras.src"),
    (re.compile(r"\btensorflow\.(core|python)\b"), "TensorFlow internals"),
    (re.compile(r"\bobject\.__(set|del)attr__\("), "object.__setattr__ on a Keras object"),
]
_ATTRIBUTE = re.compile(r"\.(_[A-Za-z]\w*)|(?:get|has|set)attr\([^,()]+,\s*[\"'](_[A-Za-z]\w*)")
_OWN_DEFINITION = re.compile(
    r"(?:def|class)\s+(_\w+)|self\.(_\w+)\s*[:=]|^\s*(_\w+)\s*[:=]", re.MULTILINE
)


def _sources() -> dict[Path, str]:
    return {
        path.relative_to(ROOT): path.read_text()
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _keras_private_names() -> set[str]:
    inputs = keras.Input((2,))
    functional = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    objects = [
        keras.layers.Layer,
        keras.layers.RNN,
        keras.layers.Bidirectional,
        keras.Sequential,
        type(functional),
        keras.KerasTensor,
        keras.Variable,
        keras.optimizers.Optimizer,
        keras.callbacks.Callback,
        # instances too: Keras sets many private attributes in __init__
        keras.layers.LSTM(2),
        keras.layers.Bidirectional(keras.layers.LSTM(2)),
        functional,
        keras.Sequential([inputs, keras.layers.Dense(1)]),
        inputs,
        keras.Variable(1.0),
    ]
    return {
        name
        for cls in objects
        for name in dir(cls)
        if name.startswith("_") and not name.startswith("__")
    }


def _offences(sources: dict[Path, str]) -> dict[Path, list[str]]:
    own = {
        name
        for text in sources.values()
        for match in _OWN_DEFINITION.finditer(text)
        for name in match.groups()
        if name
    }
    private = _keras_private_names() - own
    found: dict[Path, list[str]] = {}
    for path, text in sources.items():
        if path == INTERNALS:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            hits = [label for pattern, label in _MODULE_PATTERNS if pattern.search(line)]
            hits += [
                name
                for match in _ATTRIBUTE.finditer(line)
                for name in match.groups()
                if name in private
            ]
            for hit in hits:
                found.setdefault(path, []).append(f"{path}:{number}: {hit}: {line.strip()}")
    return found


def test_private_api_only_in_internals():
    found = _offences(_sources())
    unexpected = {path: lines for path, lines in found.items() if path not in PENDING}
    assert not unexpected, (
        "Private Keras/TensorFlow API outside keras_gates/_internals.py; add an entry point "
        "there and call it instead:\n" + "\n".join(line for v in unexpected.values() for line in v)
    )
    clean = sorted(str(p) for p in PENDING if p not in found)
    assert not clean, f"These files no longer use private API: remove them from PENDING: {clean}"


def test_the_check_finds_what_it_looks_for():
    sample = {
        Path("keras_gates/sample.py"): (
            "from keras.src import tree\n"
            "layers = model._flatten_layers(include_self=False)\n"
            "name = getattr(t, '_keras_history')[0].name\n"
            "self._writer = None\n"
            "self._writer.flush()\n"
        )
    }
    lines = _offences(sample)[Path("keras_gates/sample.py")]
    assert [line.split(": ")[1] for line in lines] == [
        "keras.src",
        "_flatten_layers",
        "_keras_history",
    ]


def test_every_private_entry_point_resolves_on_this_keras():
    from keras_gates import _internals

    _internals.check_keras()


def test_a_missing_entry_point_names_the_keras_version(monkeypatch):
    from keras_gates import _internals

    monkeypatch.setattr(_internals, "_ENTRY_POINTS", [("keras.src.backend", "no_such_kernel")])
    with pytest.raises(ImportError, match=rf"Keras {re.escape(keras.__version__)} does not have"):
        _internals.check_keras()


def _nested_model():
    from keras_gates import GatedGRU, GatedLSTM

    inner = keras.Sequential(
        [keras.Input((5, 3)), GatedGRU(4, return_sequences=True)], name="inner"
    )
    inputs = keras.Input((5, 3))
    h = inner(inputs)
    h = keras.layers.Bidirectional(GatedLSTM(3, return_sequences=True))(h)
    h = keras.layers.TimeDistributed(keras.layers.Dense(2))(h)
    return keras.Model(inputs, keras.layers.RNN(keras.layers.GRUCell(2))(h))


def test_public_layer_walker_finds_what_keras_private_walker_finds():
    from keras_gates import _internals

    model = _nested_model()
    mine = {id(layer) for layer in _internals.flatten_layers(model)}
    theirs = {
        id(layer)
        for layer in model._flatten_layers(include_self=False)
        if not isinstance(layer, keras.layers.InputLayer)  # left out on purpose
    }
    assert mine == theirs
    assert len(_internals.flatten_layers(model, include_self=True)) == len(mine) + 1


def test_exporter_entry_points_run_a_graph():
    import numpy as np

    from keras_gates import _internals

    model = _nested_model()
    functional = _internals.functional_of(model)
    assert functional is model
    seen = []

    def operation_fn(op):
        seen.append(op.name)
        assert "training" in _internals.call_context_args(op) or not hasattr(op, "cell")
        return op

    x = np.zeros((2, 5, 3), "float32")
    out = _internals.run_through_graph(functional, x, operation_fn)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out), keras.ops.convert_to_numpy(model(x))
    )
    assert seen[0] == "inner" and len(seen) == 4
    assert _internals.producing_layer(model.outputs[0]).name == model.layers[-1].name
    sequential = keras.Sequential([keras.Input((5, 3)), keras.layers.Dense(1)])
    assert _internals.functional_of(sequential) is not None
    masked = keras.ops.ones((2, 5))
    _internals.set_keras_mask(masked, keras.ops.ones((2,), dtype="bool"))
    assert _internals.get_keras_mask(masked) is not None
