"""The feeds every runner of an export builds the same way (``keras_gates/signature.py``):
defaults for lengths and state inputs, and the checks on lengths and masked steps. Direct, no
model, no server: the end-to-end paths (Predictor, validation, the server) are in test_export_*
and test_serving_*.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_gates.serving import validation
from keras_gates.serving.errors import BadRequest
from keras_gates.serving.runtime import TensorInfo, specs_of
from keras_gates.signature import FeedError, Signature, TensorSpec, complete_feeds

# enc [B, T, 3] with enc_lengths; dec [B, T', 2] with dec_lengths, masked where 0, at least 2
# steps a row; side [B, T'] merged step by step with dec; two states of the layer "rnn".
SIGNATURE = Signature(
    inputs=(
        TensorSpec("enc", "sequence", "float32", (None, None, 3)),
        TensorSpec("dec", "sequence", "float32", (None, None, 2), min_length=2, mask_value=0.0),
        TensorSpec("side", "sequence", "float32", (None, None), aligned_with="dec"),
        TensorSpec("enc_lengths", "lengths", "int32", (None,), sequence_input="enc"),
        TensorSpec("dec_lengths", "lengths", "int32", (None,), sequence_input="dec"),
        TensorSpec("rnn.h_in", "state", "float32", (None, 4), state_pair="rnn.h_out"),
        TensorSpec("rnn.c_in", "state", "float32", (None, 4), state_pair="rnn.c_out"),
    ),
    outputs=(TensorSpec("y", "output", "float32", (None, 1)),),
    streaming=True,
)
FIXED = Signature(  # a time axis the export cannot pad
    inputs=(
        TensorSpec("x", "sequence", "float32", (None, 6, 2), padding_refused="fixed at 6"),
        TensorSpec("lengths", "lengths", "int32", (None,), sequence_input="x"),
    ),
    outputs=(TensorSpec("y", "output", "float32", (None, 1)),),
)
DATATYPES = {"float32": "FP32", "int32": "INT32"}


def _data(batch: int = 2, enc: int = 5, dec: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "enc": rng.normal(size=(batch, enc, 3)).astype("float32"),
        "dec": rng.normal(size=(batch, dec, 2)).astype("float32") + 10.0,  # no step equals 0
        "side": rng.normal(size=(batch, dec)).astype("float32"),
    }


def _server_view(signature: Signature) -> tuple[TensorInfo, ...]:
    """The inputs as the server describes them (``TensorInfo``, datatypes by protocol name)."""
    return tuple(TensorInfo(t, DATATYPES[t.dtype]) for t in signature.inputs)


def test_defaults_are_each_sequences_own_time_and_zero_states_in_input_order():
    given = _data(batch=2, enc=5, dec=3)
    feeds = SIGNATURE.complete_feeds(given)
    assert list(feeds) == [t.name for t in SIGNATURE.inputs]
    for name in given:
        assert feeds[name] is given[name]  # given inputs are passed through untouched
    assert feeds["enc_lengths"].tolist() == [5, 5] and feeds["enc_lengths"].dtype == np.int32
    assert feeds["dec_lengths"].tolist() == [3, 3] and feeds["dec_lengths"].dtype == np.int32
    for state in ("rnn.h_in", "rnn.c_in"):
        assert feeds[state].shape == (2, 4) and feeds[state].dtype == np.float32
        assert not feeds[state].any()


def test_given_lengths_and_states_are_kept_and_unknown_names_come_last():
    given = {
        **_data(batch=1),
        "rnn.h_in": np.ones((1, 4), np.float32),
        "dec_lengths": np.array([2], np.int32),
        "extra": np.zeros(1),
    }
    feeds = complete_feeds(SIGNATURE.inputs, given)
    assert feeds["dec_lengths"] is given["dec_lengths"] and feeds["rnn.h_in"] is given["rnn.h_in"]
    assert feeds["enc_lengths"].tolist() == [5] and not feeds["rnn.c_in"].any()
    assert list(feeds)[-1] == "extra"


def test_the_servers_tensor_descriptions_get_the_same_defaults():
    given = _data(batch=3, enc=4, dec=7)
    ours = SIGNATURE.complete_feeds(given)
    theirs = complete_feeds(specs_of(_server_view(SIGNATURE)), given)
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype
        np.testing.assert_array_equal(ours[name], theirs[name])


def test_a_signature_without_sequence_input_measures_the_first_sequence():
    legacy = Signature(
        inputs=(
            TensorSpec("x", "sequence", "float32", (None, None, 2)),
            TensorSpec("lengths", "lengths", "int32", (None,)),
        ),
        outputs=(),
    )
    x = np.ones((2, 7, 2), np.float32)
    assert legacy.complete_feeds({"x": x})["lengths"].tolist() == [7, 7]
    assert legacy.lengths_for("x") == "lengths"
    with pytest.raises(FeedError, match="time length 7 of input 'x'"):
        legacy.check_feeds({"x": x, "lengths": np.array([8, 1])})


def test_complete_feeds_pass_the_checks():
    SIGNATURE.check_feeds(SIGNATURE.complete_feeds(_data()))
    with_lengths = {**_data(), "enc_lengths": np.array([1, 5]), "dec_lengths": np.array([2, 3])}
    SIGNATURE.check_feeds(SIGNATURE.complete_feeds(with_lengths))


@pytest.mark.parametrize(
    "lengths, message",
    [
        ([0, 5], r"`lengths` input 'enc_lengths', expected values between 1 and the time length 5"),
        ([6, 5], r"between 1 and the time length 5 of input 'enc', .* got \[6, 5\]"),
        ([5, 5, 5], r"one per row \(shape \(2,\)\), got \[5, 5, 5\]"),
        ([[5], [5]], r"shape \(2,\)"),
        ([2.5, 5.0], r"expected whole numbers of steps .* got \[2.5, 5.0\]"),  # not cut to 2
    ],
)
def test_lengths_outside_one_to_time_are_refused(lengths, message):
    feeds = SIGNATURE.complete_feeds({**_data(), "enc_lengths": np.array(lengths)})
    with pytest.raises(FeedError, match=message):
        SIGNATURE.check_feeds(feeds)


def test_rows_shorter_than_the_min_length_are_refused_given_or_defaulted():
    feeds = SIGNATURE.complete_feeds({**_data(), "dec_lengths": np.array([2, 1])})
    with pytest.raises(FeedError, match=r"rows of \[2, 1\] steps for input 'dec', expected at le"):
        SIGNATURE.check_feeds(feeds)
    one_step = SIGNATURE.complete_feeds(_data(dec=1))  # the default: the whole row, 1 step
    with pytest.raises(FeedError, match="expected at least 2 steps per row"):
        SIGNATURE.check_feeds(one_step)


def test_an_input_that_refuses_padding_takes_only_its_full_time():
    x = np.ones((2, 6, 2), np.float32)
    FIXED.check_feeds(FIXED.complete_feeds({"x": x}))
    FIXED.check_feeds({"x": x, "lengths": np.array([6, 6])})
    with pytest.raises(FeedError, match=r"cannot be padded: this export cannot pad 'x': fixed at"):
        FIXED.check_feeds({"x": x, "lengths": np.array([6, 4])})


def test_masked_steps_before_unmasked_ones_are_refused_within_each_rows_length():
    data = _data(batch=3, dec=4)
    data["dec"][0, 3] = 0.0  # masked after the last unmasked step: end padding, fine
    data["dec"][1, 0] = 0.0  # pre-padding: a hole
    data["dec"][2, 1] = 0.0  # a hole in the middle
    with pytest.raises(FeedError, match=r"masked steps \(equal to 0\) .* rows \[1, 2\]"):
        SIGNATURE.check_feeds(SIGNATURE.complete_feeds(data))
    data["dec"][1, 0] = 1.0
    with pytest.raises(FeedError, match=r"rows \[2\]"):
        SIGNATURE.check_feeds(SIGNATURE.complete_feeds(data))
    # row 2 ends on its masked step (length 2): masked steps only at the end, fine
    SIGNATURE.check_feeds(SIGNATURE.complete_feeds({**data, "dec_lengths": np.array([4, 4, 2])}))


def test_a_masked_input_without_lengths_input_is_checked_over_its_whole_time():
    signature = Signature(
        inputs=(TensorSpec("tok", "sequence", "int32", (None, None), mask_value=0.0),),
        outputs=(),
    )
    with pytest.raises(FeedError, match=r"rows \[0\]"):
        signature.check_feeds({"tok": np.array([[0, 3, 4], [3, 4, 0]], np.int32)})


def test_inputs_merged_step_by_step_need_one_time_dimension():
    data = _data(dec=3)
    data["side"] = data["side"][:, :2]
    with pytest.raises(FeedError, match="'side' and 'dec' with 2 and 3 steps"):
        SIGNATURE.check_feeds(SIGNATURE.complete_feeds(data))


def test_the_server_answers_the_same_checks_with_400_naming_the_model():
    inputs = _server_view(SIGNATURE)
    feeds = complete_feeds(specs_of(inputs), {**_data(), "enc_lengths": np.array([9, 5], np.int32)})
    with pytest.raises(BadRequest) as info:
        validation.check_feeds("encdec", inputs, feeds)
    assert info.value.status == 400
    assert info.value.message.startswith("Model 'encdec': Received an invalid value for `lengths`")
    assert "expected values between 1 and the time length 5" in info.value.message
    validation.check_feeds("encdec", inputs, complete_feeds(specs_of(inputs), _data()))
