"""A character-level GatedLSTM language model of Python source, and what its units track.

Karpathy, Johnson & Fei-Fei ("Visualizing and Understanding Recurrent Networks", 2015) trained
character models on code and found, by looking, cells that track "inside a quote", the position
in the line, indentation and bracket depth. This example repeats the experiment on the Python
standard library's own source (``Lib/**/*.py`` of the running interpreter: no download) and finds
the units automatically: labels computed from the source with ``tokenize`` (inside a string
literal, inside a comment, bracket depth, column, indentation) are scored against every unit and
signal with :func:`keras_gates.inspect.probe`, on files the model never trained on. The
quote-tracking unit is drawn over real code (characters coloured by its activation, like
Karpathy et al.'s figure 2) and LSTMVis-style :func:`keras_gates.inspect.match` looks for the
other strings from one selected string.

    python examples/char_model.py                      # ~10 minutes of CPU training
    python examples/char_model.py --minutes 5          # stop training after 5 minutes
    python examples/char_model.py --load char_model_out/char_model.keras   # analyse it again
    python examples/char_model.py --quick              # tiny smoke run (the test suite uses it)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sysconfig
import time
import tokenize
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_gates import GatedLSTM  # noqa: E402
from keras_gates.inspect import match, probe, save_figure  # noqa: E402

# Printable ASCII, newline and tab; every other character reads as one "unknown" symbol.
ALPHABET = "\n\t" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = len(ALPHABET)
CODES = {char: code for code, char in enumerate(ALPHABET)}
CONCEPTS = ("in_string", "in_comment", "bracket_depth", "column", "indentation")
STRING_TOKENS = {tokenize.STRING}
FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # Python >= 3.12 splits f-strings
FSTRING_END = getattr(tokenize, "FSTRING_END", None)


def encode(text: str) -> np.ndarray:
    return np.array([CODES.get(char, UNKNOWN) for char in text], dtype=np.int32)


def char_labels(source: str) -> dict[str, np.ndarray]:
    """Per character of ``source``: the concepts, from its tokens (raises on invalid Python)."""
    lines = source.splitlines(keepends=True)
    starts = np.concatenate([[0], np.cumsum([len(line) for line in lines])]).astype(int)
    in_string = np.zeros(len(source), bool)
    in_comment = np.zeros(len(source), bool)
    depth_change = np.zeros(len(source) + 1, np.int32)
    fstrings = []  # start offsets of the f-strings open (3.12 tokenizes them in pieces)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        begin = starts[token.start[0] - 1] + token.start[1] if token.start[0] <= len(lines) else 0
        end = starts[token.end[0] - 1] + token.end[1] if token.end[0] <= len(lines) else begin
        if token.type in STRING_TOKENS:
            in_string[begin:end] = True
        elif token.type == FSTRING_START:
            fstrings.append(begin)
        elif token.type == FSTRING_END:
            in_string[fstrings.pop() : end] = True
        elif token.type == tokenize.COMMENT:
            in_comment[begin:end] = True
        elif token.type == tokenize.OP and token.string in "([{" and not fstrings:
            depth_change[begin] += 1
        elif token.type == tokenize.OP and token.string in ")]}" and not fstrings:
            depth_change[begin] -= 1
    line_of = np.repeat(np.arange(len(lines)), [len(line) for line in lines])
    indents = np.array(
        [len(line) - len(line.lstrip(" \t")) if line.strip() else 0 for line in lines]
    )
    return {
        "in_string": in_string,
        "in_comment": in_comment,
        "bracket_depth": np.cumsum(depth_change)[: len(source)].astype(np.float32),
        "column": (np.arange(len(source)) - starts[line_of]).astype(np.float32),
        "indentation": indents[line_of].astype(np.float32),
    }


def load_corpus(max_chars: int, seed: int) -> tuple[str, dict[str, np.ndarray], list[str]]:
    """Stdlib files in a seeded random order, up to ``max_chars``: text, labels, file names."""
    root = Path(sysconfig.get_paths()["stdlib"])
    installed = {"site-packages", "dist-packages"}  # third-party packages: not the stdlib
    files = sorted(
        p for p in root.glob("**/*.py") if not installed & set(p.relative_to(root).parts)
    )
    np.random.default_rng(seed).shuffle(files)
    texts, labels, names, total = [], [], [], 0
    for path in files:
        if total >= max_chars:
            break
        try:
            with tokenize.open(path) as stream:
                text = stream.read()
            parts = char_labels(text)
        except (SyntaxError, UnicodeDecodeError, tokenize.TokenError, IndentationError):
            continue  # test data written in Python 2 or on purpose broken
        if not text.endswith("\n"):
            text, parts = text + "\n", char_labels(text + "\n")
        texts.append(text)
        labels.append(parts)
        names.append(str(path.relative_to(root)))
        total += len(text)
    joined = {name: np.concatenate([part[name] for part in labels]) for name in CONCEPTS}
    return "".join(texts), joined, names


def windows(codes: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    return codes[starts[:, None] + np.arange(length)[None, :]]


def build_model(units: int, embedding: int) -> keras.Model:
    inputs = keras.Input((None,), dtype="int32", name="chars")
    h = keras.layers.Embedding(UNKNOWN + 1, embedding, name="embed")(inputs)
    h = GatedLSTM(units, return_sequences=True, name="lstm")(h)
    model = keras.Model(inputs, keras.layers.Dense(UNKNOWN + 1, name="next_char")(h))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def train(model, codes, args, rng) -> float:
    """Train on random windows until ``args.steps`` or ``args.minutes``; the last mean loss."""
    began, losses = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        starts = rng.integers(0, len(codes) - args.seq_len - 1, args.batch)
        batch = windows(codes, starts, args.seq_len + 1)
        losses.append(float(model.train_on_batch(batch[:, :-1], batch[:, 1:])))
        elapsed = time.perf_counter() - began
        if step % args.report == 0 or step == args.steps:
            bits = np.mean(losses[-args.report :]) / np.log(2)
            print(f"step {step:5d}  {bits:.3f} bits/char  {elapsed:6.0f} s", flush=True)
        if elapsed > 60 * args.minutes:
            print(f"stopped after {step} steps: the {args.minutes:g}-minute budget is spent")
            break
    return float(np.mean(losses[-args.report :]))


def draw_unit(text: str, values: np.ndarray, title: str, center: float, spread: float):
    """Karpathy et al.'s figure 2: each character over a background coloured by the unit
    (white at ``center``, full colour at ``center ± spread``)."""
    import matplotlib.pyplot as plt

    lines = text.split("\n")
    width = max(len(line) for line in lines) + 1
    grid = np.full((len(lines), width), np.nan)
    position = 0
    for row, line in enumerate(lines):
        segment = values[position : position + len(line) + 1]  # the line and its newline
        grid[row, : len(segment)] = segment
        position += len(line) + 1
    figure, axis = plt.subplots(figsize=(0.11 * width + 1, 0.22 * len(lines) + 0.8))
    low, high = center - spread, center + spread
    image = axis.imshow(grid, cmap="coolwarm", vmin=low, vmax=high, aspect="auto")
    for row, line in enumerate(lines):
        for column, char in enumerate(line):
            if not char.isspace():
                axis.text(column, row, char, ha="center", va="center", family="monospace",
                          fontsize=8)  # fmt: skip
    axis.set_xticks([]), axis.set_yticks([])
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.02, pad=0.01)
    return figure


def figure_window(in_string: np.ndarray, warm_up: int) -> int:
    """The window (row of ``in_string``) with the most strings among those that are mostly code
    (10-40 % of the characters shown inside strings): a figure of code, not of a data table."""
    shown = in_string[:, warm_up:].astype(int)
    openings = (np.diff(shown, axis=1) == 1).sum(axis=1)
    fraction = shown.mean(axis=1)
    mostly_code = (fraction >= 0.1) & (fraction <= 0.4)
    return int(np.argmax(np.where(mostly_code, openings, -1)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128, help="training window (chars)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6000, help="most training steps")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    parser.add_argument("--chars", type=int, default=3_000_000, help="stdlib characters read")
    parser.add_argument("--eval-windows", type=int, default=48)
    parser.add_argument("--eval-len", type=int, default=600)
    parser.add_argument("--warm-up", type=int, default=100, help="eval steps not scored")
    parser.add_argument("--report", type=int, default=200, help="print the loss every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="char_model_out", help="folder for the figure and json")
    parser.add_argument("--load", default=None, help="a char_model.keras to analyse, untrained")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.units, args.embedding, args.seq_len, args.batch, args.steps = 8, 4, 32, 8, 4
        args.chars, args.eval_windows, args.eval_len, args.warm_up, args.report = (
            60_000, 4, 120, 10, 2
        )  # fmt: skip
    return args


def main() -> None:
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    text, labels, names = load_corpus(args.chars, args.seed)
    codes = encode(text)
    held_out = int(len(codes) * 0.9)  # the last files: never trained on
    while held_out < len(text) and text[held_out - 1] != "\n":
        held_out += 1
    print(
        f"{len(names)} stdlib files, {len(text):,} characters ({len(text) - held_out:,} held out)"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.load:
        model, loss = keras.saving.load_model(args.load), float("nan")
        print(f"loaded {args.load}: no training")
    else:
        model = build_model(args.units, args.embedding)
        loss = train(model, codes[:held_out], args, rng)
        print(f"training loss {loss / np.log(2):.3f} bits/char")
        model.save(out / "char_model.keras")

    length = args.eval_len
    evaluation = np.random.default_rng(args.seed + 1)  # the same windows with --load
    starts = evaluation.integers(held_out, len(codes) - length, args.eval_windows)
    x = windows(codes, starts, length)
    concepts = {name: windows(value, starts, length) for name, value in labels.items()}
    scored = np.ones(x.shape, bool)
    scored[:, : args.warm_up] = False  # the state settles in: not scored
    result = probe(model, x, concepts, mask=scored)
    print("\nbest unit per concept (held-out code; AUC for binary, Pearson r for continuous):")
    print(result.table(k=1))

    best = next(row for row in result.top("in_string", k=20) if row.signal in ("hidden", "cell"))
    pick = figure_window(concepts["in_string"], args.warm_up)
    trace_values = _unit_values(model, x[pick : pick + 1], best)
    shown = slice(args.warm_up, length)
    shown_text = text[starts[pick] + args.warm_up : starts[pick] + length]
    title = (
        f"{best.layer} {best.signal} unit {best.unit} (in_string AUC {best.score:.3f}): "
        "red above, blue below the midpoint of its means inside and outside strings"
    )
    center, spread = _colour_scale(model, x, concepts["in_string"], scored, best)
    figure = draw_unit(shown_text, trace_values[shown], title, center, spread)
    save_figure(figure, str(out / "char-quote-unit.png"))
    print(f"wrote {out / 'char-quote-unit.png'}")

    _match_a_string(model, x, concepts["in_string"], pick, best, trace_values, args.warm_up)
    bits = None if np.isnan(loss) else loss / np.log(2)
    document = {"args": vars(args), "loss_bits_per_char": bits, **result.to_json(k=3)}
    (out / "char-model.json").write_text(json.dumps(document, indent=2) + "\n")


def _match_a_string(model, x, in_string, pick, best, values, warm_up) -> None:
    """LSTMVis on the figure's longest string: the units above the threshold halfway between the
    unit's mean inside and outside strings, and how much of the matches found are strings."""
    spans = [(a, b) for a, b in _runs(in_string[pick, warm_up:]) if b - a > 2]
    if not spans or best.score < 0.5:
        print("match: skipped (no string in the window, or the unit is low inside strings)")
        return
    first, stop = max(spans, key=lambda s: s[1] - s[0])  # the longest string of the window
    # the characters between the quotes: the unit turns on after reading the opening quote
    span = (pick, warm_up + int(first) + 1, warm_up + int(stop) - 1)
    inside = in_string[pick]
    threshold = float((values[inside].mean() + values[~inside].mean()) / 2)
    found = match(model, x, span, threshold, layer=best.layer, signal=best.signal, k=10)
    overlap = [float(in_string[s, a:b].mean()) for s, a, b, _ in found.matches]
    print(
        f"match from the string at steps {span[1]}-{span[2]} of window {pick} ({best.signal} "
        f"> {threshold:.2f}): {len(found.units)} units on, unit {best.unit} "
        f"{'among them' if best.unit in found.units else 'not among them'}; "
        f"{len(found.matches)} matches, {np.mean(overlap) if overlap else 0.0:.0%} of their "
        "characters inside strings"
    )


def _colour_scale(model, x, in_string, scored, row) -> tuple[float, float]:
    """White at the midpoint of the unit's means inside and outside strings (scored steps of
    every window), full colour at its 2nd / 98th percentile, whichever is farther."""
    from keras_gates.inspect import trace_model

    values = trace_model(model, x)[row.layer][row.signal][..., row.unit][scored]
    inside = in_string[scored]
    center = float((values[inside].mean() + values[~inside].mean()) / 2)
    low, high = np.percentile(values, [2, 98])
    return center, max(abs(high - center), abs(center - low), 1e-6)


def _unit_values(model, x, row) -> np.ndarray:
    from keras_gates.inspect import trace_model

    return trace_model(model, x)[row.layer][row.signal][0, :, row.unit]


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


if __name__ == "__main__":
    main()
