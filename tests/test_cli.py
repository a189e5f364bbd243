"""The `keras-gates` command line: help, version, subcommands."""

from __future__ import annotations

import sys

import pytest

from keras_gates import __version__
from keras_gates.cli import main
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
    for command in ("inspect", "export", "serve"):
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


@pytest.mark.parametrize("command", ["inspect", "export", "serve"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: keras-gates {command}" in capsys.readouterr().out
