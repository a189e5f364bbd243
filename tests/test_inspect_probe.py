"""Concept probes and hypothesis matching with known answers.

A GatedLSTM wired by hand (its named gate weights set one by one) has a unit that is 1 inside
quotes and 0 outside: probe must rank it first, match must select it and find the other quoted
spans. The scores are checked against scikit-learn's ``roc_auc_score`` and scipy's ``pearsonr``
on random data, with ties and masks. The hand-wired tests also run on JAX and PyTorch
(tests/test_backends.py).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_gates import GatedLSTM
from keras_gates.inspect import Match, ProbeRow, match, pearson, probe, roc_auc, trace_model

# Scores are float64 sums over at most a few thousand steps: agreement to round-off.
SCORE_ATOL = 1e-9
UNITS, STEPS, QUOTE = 4, 40, 0  # feature 0 marks a quote character
BIG = 10.0  # saturates each sigmoid: sigmoid(±10) is 1 within 5e-5


def quote_model(noise_features: int = 2) -> keras.Model:
    """Unit 0 of the LSTM toggles at each quote: 1 from an opening quote up to the closing one.

    At a quote the forget gate closes (f = σ(BIG - 2 BIG q)) and the input gate opens only when
    the unit was off (i = σ(2 BIG q - 4 BIG h₀ - BIG)); the candidate and output gates stay open,
    so c₀ becomes 1 on an opening quote and 0 on a closing one, and holds between quotes.
    The other units read the noise features through small random weights (|h| < 0.5).
    """
    keras.utils.set_random_seed(0)
    features = 1 + noise_features
    inputs = keras.Input((None, features))
    lstm = GatedLSTM(UNITS, return_sequences=True, name="quotes")
    model = keras.Model(inputs, lstm(keras.layers.Masking(0.0)(inputs)))
    rng = np.random.default_rng(0)
    weights = {}
    for gate in ("input", "forget", "candidate", "output"):
        kernel = rng.normal(scale=0.1, size=(features, UNITS)).astype("float32")
        recurrent = rng.normal(scale=0.1, size=(UNITS, UNITS)).astype("float32")
        kernel[:, 0], recurrent[:, 0], recurrent[0, :] = 0.0, 0.0, 0.0
        kernel[QUOTE, 1:] = 0.0
        weights[gate] = {"kernel": kernel, "recurrent_kernel": recurrent, "bias": np.zeros(UNITS)}
    weights["forget"]["kernel"][QUOTE, 0] = -2 * BIG
    weights["forget"]["bias"][0] = BIG
    weights["input"]["kernel"][QUOTE, 0] = 2 * BIG
    weights["input"]["recurrent_kernel"][0, 0] = -4 * BIG
    weights["input"]["bias"][0] = -BIG
    weights["candidate"]["bias"][0] = BIG
    weights["output"]["bias"][0] = BIG
    lstm.set_gate_weights(weights)
    return model


def quoted_batch(seed: int = 1, batch: int = 3):
    """Inputs with quotes at random places, the inside-quote labels and the quoted spans.

    A step is inside when an odd number of quotes has been read up to and including it (the
    opening quote is inside, the closing one outside: what the unit holds after reading it).
    The last sample is padded (all-zero steps, masked by the model) after step 30.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 1.0, size=(batch, STEPS, 3)).astype("float32")
    x[..., QUOTE] = 0.0
    spans = []
    for row in range(batch):
        starts = np.sort(rng.choice(np.arange(2, 25, 5), size=3, replace=False))
        for start in starts:
            stop = start + int(rng.integers(2, 5))
            x[row, [start, stop], QUOTE] = 1.0
            spans.append((row, int(start), int(stop)))
    x[-1, 30:] = 0.0
    inside = np.zeros((batch, STEPS), bool)
    for row, start, stop in spans:
        inside[row, start:stop] = True
    return x, inside, spans


@pytest.fixture(scope="module")
def wired():
    """The model, its batch, labels and spans, and its traces (traced once: cheap on JAX)."""
    x, inside, spans = quoted_batch()
    model = quote_model()
    return model, x, inside, spans, trace_model(model, x)


def test_hand_wired_quote_unit_comes_first_in_probe(wired):
    model, x, inside, _, _ = wired
    depth = np.cumsum(x[..., QUOTE], axis=1)  # quotes read so far: continuous
    result = probe(model, x, {"in_quote": inside, "quotes_read": depth.astype("float32")})
    best = result.top("in_quote", k=3)
    assert best[0] == ProbeRow("in_quote", "quotes", best[0].signal, 0, best[0].score, "auc")
    assert best[0].signal in ("hidden", "cell") and best[0].score >= 0.95, result.table()
    assert [row.unit for row in best[:2]] == [0, 0]  # hidden and cell of the same unit
    assert result.steps["in_quote"] == int((x != 0).any(axis=2).sum())  # padding excluded
    assert result.positives["in_quote"] == int(inside.sum())
    assert result.metrics == {"in_quote": "auc", "quotes_read": "pearson"}
    document = result.to_json(k=2)
    assert document["concepts"]["in_quote"]["top"][0]["unit"] == 0
    assert set(document["concepts"]["in_quote"]["scores"]["quotes"]) == {
        "hidden",
        "cell",
        "input",
        "forget",
        "candidate",
        "output",
    }
    assert "in_quote" in result.table() and "quotes_read" in result.table()


def test_hand_wired_quote_unit_is_matched_to_the_other_quoted_spans(wired):
    model, x, _, spans, traces = wired
    query = spans[0]
    found = match(model, x, span=query, threshold=0.5, k=len(spans))  # traces the model itself
    assert isinstance(found, Match) and found.units == [0] and found.layer == "quotes"
    assert sorted(m[:3] for m in found.matches) == sorted(spans[1:])
    assert all(score == pytest.approx(1.0, abs=1e-6) for *_, score in found.matches)
    strict = match(model, x, span=query, off_before=1, off_after=1, traces=traces)
    assert strict.units == [0]
    assert match(model, x, span=(query[0], query[1] - 1, query[2]), traces=traces).units == []


def test_probe_excludes_masked_steps(wired):
    model, x, inside, _, traces = wired
    lie = inside.copy()
    lie[-1, 30:] = True  # labels on the padded steps would spoil a perfect AUC if counted
    assert probe(model, x, {"in_quote": lie}, traces=traces).top("in_quote", 1)[0].score == 1.0
    keep = np.ones_like(inside)
    keep[0] = False
    masked = probe(model, x, {"in_quote": inside}, mask=keep, traces=traces)
    assert masked.steps["in_quote"] == int((x[1:] != 0).any(axis=2).sum())


def _ties(rng, shape, levels):
    return rng.integers(0, levels, size=shape).astype("float32") / levels


@pytest.mark.parametrize("levels", [None, 3], ids=["continuous", "ties"])
def test_scores_match_scikit_learn_and_scipy(levels):
    from scipy.stats import pearsonr
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    shape = (500, 12)
    values = rng.normal(size=shape) if levels is None else _ties(rng, shape, levels)
    labels = rng.random(500) < 0.3
    targets = rng.normal(size=500) + values[:, 0]
    expected_auc = [roc_auc_score(labels, values[:, u]) for u in range(shape[1])]
    expected_r = [pearsonr(values[:, u], targets).statistic for u in range(shape[1])]
    np.testing.assert_allclose(roc_auc(values, labels), expected_auc, atol=SCORE_ATOL)
    np.testing.assert_allclose(pearson(values, targets), expected_r, atol=SCORE_ATOL)


def test_scores_fixed_values():
    # Three witnesses: the definitions worked by hand on a tiny example.
    values = np.array([[0.1], [0.4], [0.35], [0.8]])
    labels = np.array([False, False, True, True])
    assert roc_auc(values, labels)[0] == 0.75  # 3 of the 4 (positive, negative) pairs ordered
    assert roc_auc(np.ones((4, 1)), labels)[0] == 0.5  # all tied: one half each
    assert pearson(np.array([[1.0], [2.0], [3.0]]), np.array([2.0, 4.0, 7.0]))[0] == (
        pytest.approx(0.9933992677987828)
    )
    assert np.isnan(pearson(np.ones((3, 1)), np.array([1.0, 2.0, 3.0]))[0])


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"q": np.zeros((3, 5), bool)}, r"expected \(3, 40\)"),
        ({"q": np.full((3, 40), 2)}, "values other than 0 and 1"),
        ({"q": np.full((3, 40), "a")}, "dtype <U1"),
        ({"q": np.zeros((3, 40), bool)}, "0 positive"),
        ({"q": np.ones((3, 40), "float32")}, "same at every counted step"),
        ({}, "non-empty dict"),
    ],
)
def test_probe_refuses_bad_labels(wired, labels, message):
    model, x, _, _, traces = wired
    with pytest.raises(ValueError, match=message):
        probe(model, x, labels, traces=traces)


def test_match_refuses_bad_arguments(wired):
    model, x, _, _, traces = wired
    with pytest.raises(ValueError, match="covers padded"):
        match(model, x, span=(2, 28, 33), traces=traces)
    with pytest.raises(ValueError, match="0 <= start < stop <= 40"):
        match(model, x, span=(0, 5, 5), traces=traces)
    with pytest.raises(ValueError, match="expected one of"):
        match(model, x, span=(0, 1, 3), signal="forgetful", traces=traces)
    with pytest.raises(ValueError, match="`layer`='nope'"):
        match(model, x, span=(0, 1, 3), layer="nope", traces=traces)


def test_probe_scores_both_directions_of_a_bidirectional_layer():
    from sklearn.metrics import roc_auc_score

    from keras_gates import GatedGRU

    keras.utils.set_random_seed(3)
    x, inside, _ = quoted_batch(seed=2)
    inputs = keras.Input((None, 3))
    both = keras.layers.Bidirectional(GatedGRU(3, return_sequences=True), name="bi")
    model = keras.Model(inputs, both(keras.layers.Masking(0.0)(inputs)))
    result = probe(model, x, {"q": inside})
    assert list(result.scores["q"]) == ["bi/forward", "bi/backward"]
    assert list(result.scores["q"]["bi/backward"]) == ["hidden", "update", "reset", "candidate"]
    trace = trace_model(model, x)["bi/backward"]  # a second witness: scikit-learn on the trace
    valid = trace["mask"]
    expected = [roc_auc_score(inside[valid], trace["hidden"][valid][:, u]) for u in range(3)]
    np.testing.assert_allclose(result.scores["q"]["bi/backward"]["hidden"], expected, atol=1e-9)


def test_char_model_labels_follow_the_tokens():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "char_model.py"
    spec = importlib.util.spec_from_file_location("char_model", path)
    char_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(char_model)
    source = 'x = f(a, "b(")  # c\n    y = [1,\n  2]\n'
    labels = char_model.char_labels(source)
    pairs = zip(labels["in_string"], labels["in_comment"], strict=True)
    flags = "".join("s" if string else "c" if comment else "." for string, comment in pairs)
    assert flags == ".........ssss...ccc." + "." * 12 + "." * 5
    depth = labels["bracket_depth"]
    assert depth[source.index("(")] == 1 and depth[source.index('"b(') + 2] == 1  # "(" in a string
    assert depth[source.index(")")] == 0 and depth[source.index("[")] == 1
    assert depth[source.index("2")] == 1 and depth[source.index("]")] == 0
    assert (
        labels["column"][source.index("y")] == 4 and labels["indentation"][source.index("y")] == 4
    )
    assert labels["indentation"][source.index("2")] == 2 and labels["indentation"][0] == 0


def test_undefined_scores_rank_last_and_are_null_in_json():
    from keras_gates.inspect import ProbeResult

    scores = {"depth": {"lstm": {"hidden": np.array([np.nan, -0.2, 0.1])}}}
    result = ProbeResult(scores, {"depth": "pearson"}, {"depth": 9}, {})
    assert [row.unit for row in result.top("depth", k=3)] == [1, 2, 0]
    document = result.to_json(k=3)["concepts"]["depth"]
    assert document["scores"]["lstm"]["hidden"] == [None, -0.2, 0.1]
    assert document["top"][-1] == {"layer": "lstm", "signal": "hidden", "unit": 0, "score": None}
    with pytest.raises(KeyError, match="unknown concept 'nope'"):
        result.top("nope")
