"""Every example in examples/ runs end to end with ``--quick``, so the examples cannot rot.

Each example runs in its own process (a fresh TensorFlow, no GPU) from the repository root.
Adding an example is one ``Example(...)`` line in ``EXAMPLES``: the script, the output lines
that prove it did its job, and any set-up it needs. A script with special needs (say a client
that needs a running server) passes ``setup``: a context manager factory that takes ``tmp_path``,
prepares what the script needs (starts the server), yields the extra command-line arguments
(``["--url", "127.0.0.1:PORT"]``) and cleans up when the run is over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests import children
from tests.serving_models import serve_process

pytestmark = pytest.mark.slow  # child processes or real servers: make test, not make check

ROOT = Path(__file__).resolve().parents[1]
QUICK_TIMEOUT_S = 120  # a quick run takes < 40 s on a busy 2-core CPU; leave slack for load


@contextlib.contextmanager
def no_setup(tmp_path: Path) -> Iterator[list[str]]:
    """The default set-up: nothing to prepare, no extra arguments."""
    yield []


@dataclasses.dataclass(frozen=True)
class Example:
    """One example script and what a successful ``--quick`` run must print."""

    script: str
    expect: tuple[str, ...]  # regular expressions, each must match somewhere in stdout
    takes_out: bool = True  # the script accepts ``--out DIR`` (pointed into tmp_path)
    # Prepares the run and yields extra command-line arguments (e.g. a server's URL).
    setup: Callable[[Path], AbstractContextManager[list[str]]] = no_setup
    outputs: tuple[str, ...] = ()  # files the run must write under ``--out``
    check: Callable[[str], None] = lambda stdout: None  # numeric checks on the output


def number_after(pattern: str, stdout: str) -> float:
    """The number captured by the first group of ``pattern`` in ``stdout``."""
    match = re.search(pattern, stdout)
    assert match, f"no line matches {pattern!r}"
    return float(match.group(1))


def check_adding_problem(stdout: str) -> None:
    # 2 / 12 = 0.167 in theory; the quick run's 256 test sequences stay within sampling noise.
    assert 0.12 < number_after(r"predict 1\.0\s+(\d\.\d+)", stdout) < 0.22


def check_distributed(stdout: str) -> None:
    # Training moved the weights, and the distributed run ended where one process ends.
    assert number_after(r"moved the weights by up to (\S+)", stdout) > 1e-3
    assert number_after(r"weight difference: (\S+)", stdout) <= 1e-5  # examples' TOLERANCE


def check_from_keras(stdout: str) -> None:
    # Same float32 arithmetic on the CPU: the gated model reproduces the stock one.
    assert number_after(r"stock vs gated outputs: (\S+)", stdout) <= 1e-5
    assert number_after(r"from_keras_gated\.keras: max abs diff (\S+)", stdout) == 0.0


@contextlib.contextmanager
def streaming_server(tmp_path: Path) -> Iterator[list[str]]:
    """A tiny streaming GatedLSTM export (one feature, like the sunspot series) being served."""
    import keras

    from keras_gates import GatedLSTM
    from keras_gates.export import to_onnx, write_triton_repo

    model = keras.Sequential([keras.Input((None, 1)), GatedLSTM(4), keras.layers.Dense(1)])
    exported = to_onnx(model, tmp_path / "stream.onnx", streaming=True, print_fn=None)
    repo = tmp_path / "repo"
    repo.mkdir()
    write_triton_repo(exported.path, repo, "sunspots_stream")
    with serve_process(repo, cwd=ROOT, env=_env()) as (url, _):
        yield ["--url", url.removeprefix("http://"), "--model", "sunspots_stream"]


# ``make demo`` runs demo.py --quick as README block 0 (tests/test_readme.py), which checks
# these expectations on its output: the demo is not run a second time here.
DEMO = Example(
    "demo.py",
    expect=(
        r"mean absolute error: GatedLSTM \d+\.\d sunspots, last-value forecast 22\.7",
        r"report: .*index\.html",
        r"tolerance 1e-05: passed",
        r"nodes \{.*'LSTM': 1",
        r"Predictor on CPUExecutionProvider",
        r"server ready on http://127\.0\.0\.1:\d+",
        r"2008\s+2\.9\s+\d+\.\d\s+\d+\.\d",
        r"streamed = whole window: \|difference\| = \d\.\de[-+]\d+",
        r"server stopped",
    ),
    outputs=(
        "sunspots.keras",
        "samples.npy",
        "sunspots.onnx",
        "sunspots_streaming.onnx",
        "inspect/index.html",
        "model_repository/sunspots/config.pbtxt",
        "model_repository/sunspots_stream/1/model.onnx",
    ),
)

EXAMPLES = [
    Example(
        "sunspots_forecast.py",
        expect=(
            r"forget bias",
            r"mean absolute error: GatedLSTM \d+\.\d sunspots",
            r"tolerance 1e-05: passed",
            r"Predictor on CPUExecutionProvider: 2008 forecast",
        ),
        outputs=("sunspots.onnx", "inspect/summary.json"),
    ),
    Example(
        "streaming_client.py",
        expect=(r"sent year\s+value\s+forecast", r"2007\s+7\.5\s+-?\d+\.\d\s+\(2\.9\)"),
        takes_out=False,
        setup=streaming_server,
    ),
    Example(
        "adding_problem.py",
        expect=(
            r"predict 1\.0\s+0\.\d{4}\s+1\.000",
            r"SimpleRNN\s+\d+\.\d{4}",
            r"GatedLSTM\s+\d+\.\d{4}",
            r"GatedGRU\s+\d+\.\d{4}",
            r"GatedLSTM: \d+/8 units keep their forget gate",
            r"GatedGRU: \d+/8 units keep their update gate",
            r"saved saturation plot .*adding_problem_T20_saturation\.png \(\d+x\d+ px\)",
            r"SimpleRNN\s+≥?\d+\s+≥?\d+\s+-",
            r"GatedLSTM\s+≥?\d+\s+≥?\d+\s+≥?\d+",
            r"GatedGRU: \d+/8 units have a half-life of at least T/2 = 10 steps; half-life per "
            r"unit \(update gate, sorted\): (≥?\d+ ){7}≥?\d+",
            r"saved memory-horizon plot .*adding_problem_T20_horizon\.png \(\d+x\d+ px\)",
        ),
        outputs=("adding_problem_T20_saturation.png", "adding_problem_T20_horizon.png"),
        check=check_adding_problem,
    ),
    Example(
        "from_keras.py",
        expect=(
            r"lstm\s+LSTM\s+-> GatedLSTM",
            r"gru\s+GRU\s+-> GatedGRU",
            r"max abs diff stock vs gated outputs: \d\.\d\de[-+]\d+",
            r"reloaded .*from_keras_gated\.keras: max abs diff \d\.\d\de[-+]\d+",
            r"forget-gate bias of 'lstm' \(8 units\)",
            r"mean [+-]\d\.\d{3}\s+std \d\.\d{3}",
            r"\(padding, masked\)",
        ),
        outputs=("from_keras_gated.keras",),
        check=check_from_keras,
    ),
    Example(
        "char_model.py",
        expect=(
            r"\d+ stdlib files, [\d,]+ characters \([\d,]+ held out\)",
            r"step\s+4\s+\d\.\d{3} bits/char",
            r"in_string\s+auc\s+lstm\s+\w+\s+\d+\s+\d\.\d{3}",
            r"bracket_depth\s+pearson\s+lstm\s+\w+\s+\d+\s+-?\d\.\d{3}",
            r"indentation\s+pearson",
            r"wrote .*char-quote-unit\.png",
            r"match: ",
        ),
        outputs=("char-quote-unit.png", "char-model.json"),
    ),
    Example(
        "multi_worker.py",
        expect=(r"worker 0 of 2: saved", r"2 workers x 8 samples", r"equal within 1e-05"),
        outputs=("weights.npz", "model.keras"),
        check=check_distributed,
    ),
    Example(
        "jax_data_parallel.py",
        expect=(r"DataParallel over 2 devices", r"NamedSharding", r"equal within 1e-05"),
        outputs=("model.keras",),
        check=check_distributed,
    ),
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", PYTHONUNBUFFERED="1"
    )
    return env


def run_quick(example: Example, tmp_path: Path, extra: list[str]) -> subprocess.CompletedProcess:
    """Run ``examples/<script> --quick [--out tmp_path/out] [extra]`` and return the result."""
    command = [sys.executable, str(ROOT / "examples" / example.script), "--quick"]
    if example.takes_out:
        command += ["--out", str(tmp_path / "out")]
    return children.run(command + extra, QUICK_TIMEOUT_S, check=False, cwd=ROOT, env=_env())


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.script for e in EXAMPLES])
def test_example_runs_quick(example: Example, tmp_path: Path) -> None:
    with example.setup(tmp_path) as extra:
        result = run_quick(example, tmp_path, extra)
    log = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode == 0, log
    check_run(example, result.stdout, tmp_path / "out", log)


def check_run(example: Example, stdout: str, out: Path, log: str = "") -> None:
    """What a successful quick run of ``example`` prints and writes under ``out``."""
    log = log or f"stdout:\n{stdout[-4000:]}"
    for pattern in example.expect:
        assert re.search(pattern, stdout), f"no line matches {pattern!r}\n{log}"
    for name in example.outputs:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, f"{path} was not written\n{log}"
    example.check(stdout)


def test_every_example_is_listed() -> None:
    """A new script in examples/ must get an entry above (helper modules excepted)."""
    helpers = {"sunspots.py"}  # imported by other examples, not run on its own
    scripts = {p.name for p in (ROOT / "examples").glob("*.py")} - helpers
    missing = scripts - {e.script for e in [*EXAMPLES, DEMO]}
    assert not missing, f"examples without a test entry in EXAMPLES: {sorted(missing)}"
