"""The padded cases of validation: rows of different lengths, garbage in the padding, each row
compared with that row run alone through Keras.

For each sequence input with a lengths input (and, with several, all of them at once) one batch
of ``PADDED_LENGTHS`` rows (more steps where the model needs them) padded to the longest. Rows
alone are cut to their length; outputs are compared on what the row alone returns (its own time
steps for per-step outputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_gates.signature import Signature, TensorSpec

from .samples import PADDED_LENGTHS, keras_outputs, onnx_feeds, padded_input, padded_lengths
from .validation_result import Row, ValidationResult, row_error


def padded_rows(
    model: Any,
    session: Any,
    signature: Signature,
    template: list[np.ndarray],
    result: ValidationResult,
) -> None:
    """Add the padded rows to ``result`` and the inputs whose rows differ to its refusals."""
    names = [t.name for t in signature.outputs if t.role == "output"]
    data = [t for t in signature.inputs if t.role in ("sequence", "other")]
    result.refusals.update(signature.padding_refusals)  # known from the trace
    fixed_time = {
        t.name: tensor.shape[1]
        for t, tensor in zip(data, model.inputs)
        if t.role == "sequence" and tensor.shape[1] is not None
    }
    groups, cases = _cases(signature, fixed_time)
    for name in groups:
        if name in fixed_time:  # no row alone to compare with: shown as refused
            label = f"padded {name}: time axis fixed at {fixed_time[name]}"
            result.rows.extend(
                Row(n, 0, fixed_time[name], float("nan"), label, (name,)) for n in names
            )
    fixed_batch = next((int(t.shape[0]) for t in model.inputs if t.shape[0] is not None), None)
    batch = fixed_batch or len(PADDED_LENGTHS)
    rng = np.random.default_rng(7)
    for case in cases:
        lengths = _case_lengths(signature, case, groups, batch)
        time = max(int(v.max()) for v in lengths.values())
        inputs = [
            padded_input(x, batch, time, lengths.get(t.name), rng) for t, x in zip(data, template)
        ]
        errors, failure = _compare(model, session, signature, names, data, inputs, lengths)
        label = "padded " + ", ".join(f"{'+'.join(groups[n])} {lengths[n].tolist()}" for n in case)
        members = tuple(m for n in case for m in groups[n])
        result.rows.extend(Row(n, batch, time, errors[n], label, members) for n in names)
        _refuse(result, case, groups, errors, failure)


def _cases(
    signature: Signature, fixed_time: dict[str, int]
) -> tuple[dict[str, list[str]], list[tuple[str, ...]]]:
    """``({padded input: it and the inputs merged with it step by step}, cases)``: each input
    that can be compared with its rows alone on its own, then all of them at once."""
    aligned = {t.name: t.aligned_with for t in signature.inputs_with("sequence") if t.aligned_with}
    groups = {
        t.name: [t.name, *(n for n, root in aligned.items() if root == t.name)]
        for t in signature.inputs_with("sequence")
        if signature.lengths_for(t.name) and t.name not in aligned
    }
    candidates = [n for n in groups if n not in fixed_time]
    cases = [(n,) for n in candidates] + ([tuple(candidates)] if len(candidates) > 1 else [])
    return groups, cases


def _case_lengths(
    signature: Signature, case: tuple[str, ...], groups: dict[str, list[str]], batch: int
) -> dict[str, np.ndarray]:
    """``{input: [batch] lengths}`` for the inputs of ``case`` and those merged with them;
    rolled per input, so that rows pad their inputs differently."""
    return {
        m: np.resize(
            np.roll(padded_lengths(max(signature.min_length(x) for x in groups[n])), -k), batch
        )
        for k, n in enumerate(case)
        for m in groups[n]
    }


def _refuse(
    result: ValidationResult,
    case: tuple[str, ...],
    groups: dict[str, list[str]],
    errors: dict[str, float],
    failure: str | None,
) -> None:
    """Record why the inputs of ``case`` cannot be padded, when their padded rows differ."""
    worst_name = max(errors, key=lambda n: errors[n])
    worst = errors[worst_name]
    if not failure and np.isfinite(worst) and worst <= result.limit(worst_name):
        return
    reason = failure or (
        f"padded rows differ from the row alone in Keras by up to {worst:.2g} (output "
        f"{worst_name!r}): a layer between this input and that output reads past each "
        "row's length (e.g. a 'same' convolution or pooling, attention, global pooling "
        "or a Flatten over time)"
    )
    # all inputs at once: only news when each passed alone (else that one is the cause)
    if len(case) == 1 or not any(n in result.refusals for n in case):
        for n in case:
            for m in groups[n]:
                result.refusals.setdefault(m, reason)


def _compare(
    model: Any,
    session: Any,
    signature: Signature,
    names: list[str],
    data: list[TensorSpec],
    inputs: list[np.ndarray],
    lengths: dict[str, np.ndarray],
) -> tuple[dict[str, float], str | None]:
    """Max error per output over the rows, and why it could not be measured (or ``None``)."""
    errors = {n: 0.0 for n in names}
    try:
        got = session.run(names, onnx_feeds(signature, inputs, lengths=lengths))
    except Exception as err:  # onnxruntime raises its own types
        return {n: float("inf") for n in names}, f"onnxruntime rejects a padded batch ({err})"
    batch = inputs[0].shape[0]
    fixed = any(t.shape[0] is not None for t in model.inputs)
    for r in range(batch):
        alone = [
            x[r : r + 1, : lengths[t.name][r]] if t.name in lengths else x[r : r + 1]
            for t, x in zip(data, inputs)
        ]
        if fixed:  # a fixed batch size (stateful): the row repeated, its first copy compared
            alone = [np.repeat(a, batch, axis=0) for a in alone]
        try:
            expected = keras_outputs(model, alone)
        except Exception as err:  # Keras raises many types for inputs it cannot run
            steps = {n: int(v[r]) for n, v in lengths.items()}
            return {n: float("inf") for n in names}, (
                f"Keras cannot run a row of {steps} steps alone ({type(err).__name__}: {err})"
            )
        for name, e, g in zip(names, expected, got):
            errors[name] = max(errors[name], row_error(e[:1], g[r : r + 1]))
    return errors, None
