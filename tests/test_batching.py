"""The one padding rule (``keras_gates.signature.pads_batches``) and the one batch layout
(``keras_gates/batching.py``) that ``keras-gates serve`` and Triton's ``model.py`` share. Direct,
no model, no server: both servers serving the same model are in test_serving_batching.py and
test_triton_real.py."""

from __future__ import annotations

import numpy as np
import pytest

from keras_gates import batching
from keras_gates.signature import Signature, TensorSpec, padded_inputs, pads_batches


def seq(name, time=None, **facts) -> TensorSpec:
    return TensorSpec(name, "sequence", "float32", (None, time, 3), **facts)


def lengths(name="lengths", of=None) -> TensorSpec:
    return TensorSpec(name, "lengths", "int32", (None,), sequence_input=of)


PER_STEP = TensorSpec("y", "output", "float32", (None, None, 2), per_step=True)
LAST = TensorSpec("h", "output", "float32", (None, 2))
POOLED = TensorSpec("p", "output", "float32", (None, None, 2))  # a time axis not the input's

# (case, inputs, outputs, pads): the rule on every shape of model it distinguishes.
CASES = [
    ("one sequence, its lengths", [seq("x"), lengths(of="x")], [PER_STEP, LAST], True),
    ("a legacy lengths input", [seq("x"), lengths()], [PER_STEP], True),
    (
        "two inputs merged step by step, one lengths",
        [seq("a"), seq("b", aligned_with="a"), lengths("a_lengths", "a")],
        [PER_STEP, LAST],
        True,
    ),
    (
        "a chain of merged inputs",
        [seq("a"), seq("b", aligned_with="a"), seq("c", aligned_with="b"), lengths("n", "a")],
        [PER_STEP],
        True,
    ),
    (
        "encoder and decoder, no time axis out",
        [seq("e"), seq("d"), lengths("e_lengths", "e"), lengths("d_lengths", "d")],
        [LAST],
        True,
    ),
    (
        "encoder and decoder with a per-step output: which time?",
        [seq("e"), seq("d"), lengths("e_lengths", "e"), lengths("d_lengths", "d")],
        [PER_STEP],
        False,
    ),
    ("no lengths input", [seq("x")], [LAST], False),
    (
        "a second sequence nobody measures",
        [seq("a"), seq("b"), lengths("a_lengths", "a")],
        [LAST],
        False,
    ),
    ("padding refused", [seq("x", padding_refused="conv"), lengths(of="x")], [LAST], False),
    (
        "a merged input refuses padding",
        [seq("a"), seq("b", aligned_with="a", padding_refused="conv"), lengths("n", "a")],
        [LAST],
        False,
    ),
    ("a fixed time axis", [seq("x", time=6), lengths(of="x")], [LAST], False),
    ("a pooled time axis out", [seq("x"), lengths(of="x")], [POOLED], False),
    ("no sequence input", [TensorSpec("v", "other", "float32", (None, 3))], [LAST], False),
]


@pytest.mark.parametrize("case, inputs, outputs, pads", CASES, ids=[c[0] for c in CASES])
def test_one_padding_rule(case, inputs, outputs, pads):
    signature = Signature(tuple(inputs), tuple(outputs))
    assert pads_batches(inputs, outputs) is pads
    assert signature.pads_batches is pads
    sequences = {t.name for t in inputs if t.role == "sequence"}
    assert padded_inputs(inputs, outputs) == (sequences if pads else frozenset())


def test_pad_concat_right_pads_with_zeros_to_the_longest():
    parts = [np.ones((1, 3, 2), np.float32), np.full((2, 1, 2), 2.0, np.float32)]
    out = batching.pad_concat(parts)
    assert out.shape == (3, 3, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], 1.0)
    np.testing.assert_array_equal(out[1:, 0], 2.0)
    np.testing.assert_array_equal(out[1:, 1:], 0.0)


def test_batch_key_leaves_out_only_the_padded_time_axes():
    short = {"x": np.zeros((1, 2, 3)), "lengths": np.zeros(1)}
    long = {"lengths": np.zeros(2), "x": np.zeros((2, 5, 3))}  # another order, another batch
    other = {"x": np.zeros((1, 5, 4)), "lengths": np.zeros(1)}
    assert batching.batch_key(short, {"x"}) == batching.batch_key(long, {"x"})
    assert batching.batch_key(short) != batching.batch_key(long)
    assert batching.batch_key(short, {"x"}) != batching.batch_key(other, {"x"})
    assert batching.group_by_key([short, other, long], {"x"}) == [[0, 2], [1]]
    assert batching.group_by_key([short, other, long]) == [[0], [1], [2]]


def test_concat_then_split_gives_each_request_its_rows_and_steps():
    parts = [
        {"a": np.ones((1, 2, 3)), "b": np.ones((1, 2, 1)), "n": np.array([2])},
        {"a": np.ones((2, 4, 3)), "b": np.ones((2, 4, 1)), "n": np.array([4, 3])},
    ]
    feeds = batching.concat_feeds(parts, {"a", "b"})
    assert {k: v.shape for k, v in feeds.items()} == {"a": (3, 4, 3), "b": (3, 4, 1), "n": (3,)}
    outputs = {"y": np.arange(3 * 4).reshape(3, 4), "h": np.arange(3)}
    rows = [batching.rows_of(p) for p in parts]
    steps = [batching.steps_of(p, "a") for p in parts]
    assert rows == [1, 2] and steps == [2, 4]
    first, second = batching.split_rows(outputs, rows, steps, {"y"})
    np.testing.assert_array_equal(first["y"], [[0, 1]])
    np.testing.assert_array_equal(second["y"], [[4, 5, 6, 7], [8, 9, 10, 11]])
    np.testing.assert_array_equal(first["h"], [0])
    np.testing.assert_array_equal(second["h"], [1, 2])
    with pytest.raises(ValueError):  # a step length per request
        batching.split_rows(outputs, rows, steps[:1], {"y"})
