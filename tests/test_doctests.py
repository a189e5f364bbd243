"""The `Example:` blocks of the public docstrings run as doctests."""

from __future__ import annotations

import doctest
import importlib

import keras
import numpy as np
import pytest

MODULES = ["keras_gates", "keras_gates.lstm", "keras_gates.gru", "keras_gates.stateful"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, extraglobs={"keras": keras, "np": np}, optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0, f"{name} has no doctest"
    assert result.failed == 0
