"""Per-sequence lengths through the traced model: which input's lengths reach each gated layer.

Every sequence input that feeds a gated layer gets its own lengths input. While the model is
traced, each tensor with a time axis carries the :class:`Lengths` of the input it came from (like
a Keras mask): per-step layers pass them on, layers that change the time axis rescale them with
their own output-length formula where each row's valid steps stay exactly those of the row alone,
and mark them *refused* (with the reason) where a padded batch cannot match the row alone. A gated
layer turns them into its node's ``sequence_lens``. What the trace learns about the inputs comes
out as one frozen :class:`LengthFacts` (:meth:`Tracker.facts`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Lengths:
    """The valid steps of each row of one tensor, counted on its own time axis.

    Args:
        value: int32 ``[batch]`` lengths.
        source: the model input whose padding they describe.
        identity: the tensor's time axis is the input's own (not pooled, cropped, ...).
        refusal: why a padded row of ``source`` cannot give the row alone's answer past here.
        steps: the same formula on a Python int (input steps -> steps here), to find the
            shortest row that still leaves a gated layer one step.
    """

    value: tf.Tensor
    source: str
    identity: bool = True
    refusal: str | None = None
    steps: Callable[[int], int] = lambda n: n

    def shortest(self, limit: int = 4096) -> int:
        """The fewest input steps that leave at least one step here (``limit`` if none do)."""
        return next((n for n in range(1, limit) if self.steps(n) >= 1), limit)


def rescale(op: Any, lengths: Lengths) -> Lengths:
    """``lengths`` after ``op``: unchanged, rescaled by ``op``'s formula, or refused."""
    rule = _rule(op)
    if rule is None:
        return lengths
    formula, reason = rule
    value = tf.maximum(formula(lengths.value), 0)
    refusal = lengths.refusal
    if reason is not None and refusal is None:
        refusal = f"layer {op.name!r} ({type(op).__name__}) {reason}"
    before = lengths.steps
    return Lengths(
        value,
        lengths.source,
        identity=False,
        refusal=refusal,
        steps=lambda n: max(int(formula(before(n))), 0),
    )


Formula = Callable[[tf.Tensor], tf.Tensor]


def _rule(op: Any) -> tuple[Formula, str | None] | None:
    """``(output-length formula, refusal or None)`` for layers that change the time axis."""
    import keras

    layers = keras.layers
    if getattr(op, "data_format", "channels_last") == "channels_first" and isinstance(
        op, (layers.MaxPooling1D, layers.AveragePooling1D, layers.Conv1D, layers.Conv1DTranspose)
    ):
        return (lambda n: n), "uses data_format='channels_first' (time is not axis 1)"
    if isinstance(op, (layers.MaxPooling1D, layers.AveragePooling1D)):
        return _window(op.pool_size[0], op.strides[0], 1, op.padding, "pool_size")
    if isinstance(op, layers.Conv1DTranspose):
        return (lambda n: n * op.strides[0]), (
            "is a transposed convolution: the last steps of a row mix with the padding after it"
        )
    if isinstance(op, (layers.Conv1D, layers.SeparableConv1D, layers.DepthwiseConv1D)):
        return _window(op.kernel_size[0], op.strides[0], op.dilation_rate[0], op.padding, "kernel")
    if isinstance(op, layers.Cropping1D):
        start, end = op.cropping
        return (lambda n: n - start - end), None
    if isinstance(op, layers.UpSampling1D):
        return (lambda n: n * op.size), None
    if isinstance(op, layers.ZeroPadding1D):
        start, end = op.padding
        if end:
            return (lambda n: n + start + end), (
                f"pads {end} zero steps after the end of the sequence: a padded row has its "
                "padding there instead"
            )
        return (lambda n: n + start), None
    return None


def _window(size: int, stride: int, dilation: int, padding: str, what: str):
    """Output lengths of a 1D window (pooling or convolution); 'same' windows read the padding."""
    span = dilation * (size - 1) + 1
    if padding == "valid":
        return (lambda n: (n - span) // stride + 1), None
    same = lambda n: (n - 1) // stride + 1  # noqa: E731  ('same' and 'causal' lengths)
    if padding == "causal" or span == 1:
        return same, None
    return same, (
        f"uses padding='same' with a {what} of {size}: its last windows extend past the end of "
        "a row, where the row alone has zeros (or nothing) and a padded row has its padding"
    )


# Operations combining their inputs step by step (layers and the ops of the functional API).
MERGES = frozenset(
    {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Divide"}
)


@dataclasses.dataclass(frozen=True)
class LengthFacts:
    """What a trace learned about the model's sequence inputs and outputs.

    Args:
        refusals: sequence input -> why its rows cannot be padded (found while tracing).
        min_lengths: sequence input -> shortest row every gated node it reaches can run.
        ties: sequence input -> the input whose time axis it shares (merged step by step).
        mask_values: sequence input -> the value whose steps its mask skips.
        output_steps: per model output, the input whose time axis it keeps step for step.
    """

    refusals: dict[str, str] = dataclasses.field(default_factory=dict)
    min_lengths: dict[str, int] = dataclasses.field(default_factory=dict)
    ties: dict[str, str] = dataclasses.field(default_factory=dict)
    mask_values: dict[str, float] = dataclasses.field(default_factory=dict)
    output_steps: tuple[str | None, ...] = ()


class Tracker:
    """The :class:`Lengths` of traced tensors, keyed by the tensor objects Keras passes around."""

    def __init__(self):
        self._by_id: dict[int, tuple[Any, Lengths]] = {}
        self.refusals: dict[str, str] = {}  # input name -> first reason found
        self.min_lengths: dict[str, int] = {}  # input name -> shortest row every node can take
        self._ties: dict[str, str] = {}  # input -> an input it is merged with step by step
        self._inputs: dict[int, tuple[Any, str]] = {}  # the model inputs' tensors
        self._mask_values: dict[str, float | None] = {}  # input -> value masking its steps
        self._masked: set[str] = set()  # inputs whose mask reaches a gated layer

    def facts(self, outputs: list[Any]) -> LengthFacts:
        """What this trace learned, with the model's (flat) ``outputs``."""
        return LengthFacts(
            refusals=dict(self.refusals),
            min_lengths=dict(self.min_lengths),
            ties=self.ties,
            mask_values=self.mask_values,
            output_steps=tuple(_aligned(self.get(t)) for t in outputs),
        )

    def set(self, tensor: Any, lengths: Lengths | None) -> None:
        if lengths is not None and isinstance(tensor, tf.Tensor):
            self._by_id[id(tensor)] = (tensor, lengths)

    def get(self, tensor: Any) -> Lengths | None:
        entry = self._by_id.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def mark_input(self, tensor: Any, name: str) -> None:
        self._inputs[id(tensor)] = (tensor, name)

    def note_mask(self, op: Any, args: tuple) -> None:
        """Remember which value masks the steps of an input (``Masking`` or ``Embedding(
        mask_zero=True)`` right on it; ``None`` where a mask is computed further in)."""
        import keras

        if isinstance(op, keras.layers.Masking):
            value = float(op.mask_value)
        elif isinstance(op, keras.layers.Embedding) and op.mask_zero:
            value = 0.0
        else:
            return
        x = args[0] if args else None
        entry = self._inputs.get(id(x))
        if entry is not None and entry[0] is x:
            self._mask_values.setdefault(entry[1], value)
        elif (found := self.get(x)) is not None:
            self._mask_values[found.source] = None

    @property
    def mask_values(self) -> dict[str, float]:
        """``{input: value}`` for inputs whose steps a mask with a known value skips."""
        return {
            source: value
            for source, value in self._mask_values.items()
            if source in self._masked and value is not None
        }

    def found(self, args: tuple, kwargs: dict) -> list[Lengths]:
        """The lengths of the tensor arguments that have some, first argument first."""
        flat = tf.nest.flatten([list(args), [v for k, v in kwargs.items() if k != "mask"]])
        return [found for t in flat if (found := self.get(t)) is not None]

    def propagate(self, op: Any, call: Callable) -> Callable:
        """``call`` (one ``op`` call) that also passes the lengths on to its outputs: those of
        its first argument that has some (Keras' mask convention), rescaled by ``op``."""

        def run(*args, **kwargs):
            self.note_mask(op, args)
            outputs = call(*args, **kwargs)
            found = self.found(args, kwargs)
            if found:
                rescaled = self._merged(op, found, outputs) or rescale(op, found[0])
                for tensor in tf.nest.flatten(outputs):
                    if _has_time_axis(tensor):
                        self.set(tensor, rescaled)
            return outputs

        return run

    def _merged(self, op: Any, found: list[Lengths], outputs: Any) -> Lengths | None:
        """Step-by-step merges (Add, Concatenate...) tie their inputs' time axes together; a
        concatenation along time cannot be padded."""
        if type(op).__name__ not in MERGES:
            return None
        first = found[0]
        axis, rank = getattr(op, "axis", -1), tf.nest.flatten(outputs)[0].shape.rank
        if type(op).__name__ == "Concatenate" and rank and axis % rank == 1:
            refusal = first.refusal or (
                f"layer {op.name!r} ({type(op).__name__}) joins sequences along time: a padded "
                "row's padding lands between them"
            )
            return dataclasses.replace(first, identity=False, refusal=refusal)
        for other in found[1:]:
            if other.identity and first.identity and self.root(other.source) != first.source:
                self._ties.setdefault(self.root(other.source), self.root(first.source))
        return None

    def root(self, source: str) -> str:
        """The input whose time axis ``source`` shares (``source`` itself if untied)."""
        while source in self._ties:
            source = self._ties[source]
        return source

    @property
    def ties(self) -> dict[str, str]:
        """``{input: the input whose time axis it shares}`` for merged sequence inputs."""
        return {source: self.root(source) for source in self._ties}

    def refuse(self, lengths: Lengths) -> None:
        if lengths.refusal is not None:
            self.refusals.setdefault(lengths.source, lengths.refusal)

    def record_lengths(self, x: tf.Tensor, lengths: Lengths | None, mask: Any) -> tf.Tensor:
        """A gated layer's ``sequence_lens``: its input's lengths (and mask), else every step.
        Records the shortest row the layer can run, a refusal its lengths carry, and that the
        input's mask reaches a gated layer."""
        steps = tf.shape(x)[1]
        full = tf.fill(tf.shape(x)[:1], steps)
        if lengths is not None:
            known = self.min_lengths.get(lengths.source, 1)
            self.min_lengths[lengths.source] = max(known, lengths.shortest())
        if lengths is None or lengths.refusal is not None:
            if lengths is not None:
                self.refuse(lengths)
            result = full
        else:
            result = tf.minimum(tf.cast(lengths.value, tf.int32), steps)
        if mask is not None:
            if lengths is not None:
                self._masked.add(lengths.source)
            result = tf.minimum(result, tf.reduce_sum(tf.cast(mask, tf.int32), axis=1))
        return result


def _has_time_axis(tensor: Any) -> bool:
    if not isinstance(tensor, tf.Tensor):
        return False
    rank = tensor.shape.rank
    return rank is not None and (rank >= 3 or (rank == 2 and tensor.dtype.is_integer))


def _aligned(lengths: Lengths | None) -> str | None:
    """The input whose time axis a tensor keeps step for step (``None``: no such input)."""
    return lengths.source if lengths is not None and lengths.identity else None
