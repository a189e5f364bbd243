"""The `keras-gates` command line: help, version, subcommands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from keras_gates import __version__, native_logs
from keras_gates.cli import build_parser, main
from tests import children


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"keras-gates {__version__}"


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("inspect", "explore", "export", "serve"):
        assert command in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: keras-gates" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


def test_serve_command_does_not_load_tensorflow():
    code = (
        "import sys; from keras_gates.cli import build_parser; "
        "build_parser('serve').parse_args(['serve', 'model.onnx']); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF loaded'"
    )
    children.run([sys.executable, "-c", code], timeout=120)


@pytest.mark.parametrize("command", ["inspect", "explore", "export", "serve"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: keras-gates {command}" in capsys.readouterr().out


HELP_IMPORTS = """
import sys
from keras_gates.cli import main
try:
    main([sys.argv[1], "--help"])
except SystemExit as done:
    assert done.code == 0, done.code
heavy = sorted({"tensorflow", "keras", "matplotlib", "jax", "torch"} & set(sys.modules))
print("heavy modules:", heavy, file=sys.stderr)
"""


@pytest.mark.parametrize("command", ["inspect", "explore", "export", "serve"])
def test_subcommand_help_imports_no_tensorflow_or_keras(command):
    done = children.run([sys.executable, "-c", HELP_IMPORTS, command], timeout=120)
    assert f"usage: keras-gates {command}" in done.stdout
    assert "heavy modules: []" in done.stderr, done.stderr


def test_help_console_script_prints_no_native_log():
    script = Path(sys.executable).with_name("keras-gates")  # the script pip installed
    env = {k: v for k, v in os.environ.items() if k != native_logs.LEVEL_ENV}
    for command in ("inspect", "export"):
        done = children.run([str(script), command, "--help"], timeout=120, env=env)
        assert "--verbose" in done.stdout, done.stdout
        assert done.stderr == ""


SUBPACKAGES = """
import sys
import keras_gates
assert keras_gates.{name}.{attribute}
assert "{name}" in dir(keras_gates)
print(sorted({{"tensorflow", "keras"}} & set(sys.modules)))
"""


@pytest.mark.parametrize(
    "name, attribute",
    [("export", "Predictor"), ("serving", "ServerConfig"), ("inspect", "write_report")],
)
def test_subpackages_are_attributes_loaded_on_first_use(name, attribute):
    code = SUBPACKAGES.format(name=name, attribute=attribute)
    done = children.run([sys.executable, "-c", code], timeout=300)
    # Predictor (onnxruntime) needs no TensorFlow; to_onnx and write_report load it, as they must
    if name in ("export", "serving"):
        assert done.stdout.strip() == "[]"


def test_unknown_attribute_of_keras_gates_is_an_attribute_error():
    import keras_gates

    with pytest.raises(AttributeError, match="has no attribute 'exporter'"):
        keras_gates.exporter  # noqa: B018


# What TensorFlow 2.21 prints on a machine without a GPU, and what older versions printed.
NATIVE_LOG = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796390827.316318    4849 cudart_stub.cc:31] Could not find cuda drivers.
I0000 00:00:1796390827.370786    4849 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.
a line of the program's own
E0000 00:00:1796390898.761033   15414 cuda_platform.cc:52] failed call to cuInit: CUDA error
W1204 13:26:59.123456   15414 some_file.cc:7] a warning
2023-05-01 12:17:26.167599: I tensorflow/core/util/port.cc:110] oneDNN custom operations are on.
Traceback (most recent call last):
"""


def test_filter_log_drops_the_records_below_the_level():
    assert native_logs.filter_log(NATIVE_LOG, 0) == NATIVE_LOG
    assert native_logs.filter_log(NATIVE_LOG, 3) == (
        "a line of the program's own\nTraceback (most recent call last):\n"
    )
    kept = native_logs.filter_log(NATIVE_LOG, 2).splitlines()
    assert [line[:5] for line in kept] == ["a lin", "E0000", "Trace"]


def test_quiet_native_logs_sets_the_level_unless_verbose_or_set(monkeypatch):
    monkeypatch.delenv(native_logs.LEVEL_ENV, raising=False)
    native_logs.quiet_native_logs(verbose=True, modules=())
    assert native_logs.LEVEL_ENV not in os.environ
    native_logs.quiet_native_logs(verbose=False, modules=())
    assert os.environ[native_logs.LEVEL_ENV] == "3"
    monkeypatch.setenv(native_logs.LEVEL_ENV, "1")  # the user's choice is kept
    native_logs.quiet_native_logs(verbose=False, modules=())
    assert os.environ[native_logs.LEVEL_ENV] == "1"


VERBOSE = {
    "inspect": ["inspect", "m.keras", "--input", "x.npy", "--out", "report", "--verbose"],
    "export": ["export", "m.keras", "-o", "m.onnx", "--verbose"],
}


@pytest.mark.parametrize("command", sorted(VERBOSE))
def test_verbose_flag(command):
    assert build_parser(command).parse_args(VERBOSE[command]).verbose is True
    assert build_parser(command).parse_args(VERBOSE[command][:-1]).verbose is False
