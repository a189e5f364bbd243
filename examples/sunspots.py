"""The yearly sunspot numbers 1700-2008 that ship with statsmodels (no download), as windows.

Used by the demo and by ``sunspots_forecast.py``: each sample is ``window`` consecutive years
(scaled to roughly [0, 1]) and the target is the next year's value.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SCALE = 200.0  # sunspot numbers stay below ~190 over 1700-2008


@dataclasses.dataclass
class Windows:
    x_train: np.ndarray  # (n, window, 1) float32
    y_train: np.ndarray  # (n, 1)
    x_test: np.ndarray
    y_test: np.ndarray
    years_test: np.ndarray  # the year each test target belongs to
    series: np.ndarray  # the whole scaled series


def load_series() -> tuple[np.ndarray, np.ndarray]:
    """``(years, sunspot numbers)`` as float arrays."""
    import statsmodels.api as sm

    data = sm.datasets.sunspots.load_pandas().data
    return data["YEAR"].to_numpy(int), data["SUNACTIVITY"].to_numpy("float32")


def load_windows(window: int = 24, test_years: int = 40) -> Windows:
    """Sliding windows; the last ``test_years`` targets are held out for testing."""
    years, values = load_series()
    series = values / SCALE
    x = np.stack([series[i : i + window] for i in range(len(series) - window)])[..., None]
    y = series[window:, None]
    target_years = years[window:]
    split = len(x) - test_years
    return Windows(
        x_train=x[:split].astype("float32"),
        y_train=y[:split].astype("float32"),
        x_test=x[split:].astype("float32"),
        y_test=y[split:].astype("float32"),
        years_test=target_years[split:],
        series=series,
    )
