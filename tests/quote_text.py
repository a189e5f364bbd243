"""Lines of code read by the hand-wired quote model of tests/test_inspect_probe.py, for the
explorer's tests: the known answer is where the quotes are.

Each character is one step: feature 0 marks a double quote (the model's unit 0 is 1 from an
opening quote up to the closing one), features 1 and 2 are small codes of the character (never
0, so no real step is padding). A line shorter than the model's steps is padded with all-zero
steps (masked by the model's ``Masking``) and with spaces in the text.
"""

from __future__ import annotations

import numpy as np

from tests.test_inspect_probe import QUOTE, STEPS

LINES = (
    'say("hi") + print("a long one") # "x" ok',
    'name = "keras" if ok else "gates"; go()',
    'x = f("quoted text here") or "b"',  # padded after step 32
)


def text(lines=LINES) -> str:
    """The ``--text`` file's content: each line padded with spaces to ``STEPS`` characters."""
    return "".join(line.ljust(STEPS) for line in lines)


def encode(lines=LINES) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The input batch ``(len(lines), STEPS, 3)`` and the labels: ``in_quote`` (binary, the
    opening quote inside, the closing one outside) and ``column`` (continuous)."""
    x = np.zeros((len(lines), STEPS, 3), "float32")
    inside = np.zeros((len(lines), STEPS), bool)
    for row, line in enumerate(lines):
        codes = np.array([ord(c) for c in line])
        quotes = codes == ord('"')
        x[row, : len(line), QUOTE] = quotes
        x[row, : len(line), 1] = 0.2 + 0.8 * (codes % 7) / 7
        x[row, : len(line), 2] = 0.2 + 0.8 * (codes % 5) / 5
        inside[row, : len(line)] = np.cumsum(quotes) % 2 == 1
    column = np.tile(np.arange(STEPS, dtype="float32"), (len(lines), 1))
    return x, {"in_quote": inside, "column": column}


def quoted_spans(lines=LINES) -> list[tuple[int, int, int]]:
    """``(sample, start, stop)`` of each quoted string: the opening quote to the closing one's
    step (excluded), the steps where the quote unit is on."""
    spans = []
    for row, line in enumerate(lines):
        at = [i for i, c in enumerate(line) if c == '"']
        spans.extend((row, start, stop) for start, stop in zip(at[::2], at[1::2], strict=True))
    return spans
