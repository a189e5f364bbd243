"""Stream a series into a running `keras-gates serve`, one step per request, as a v2 sequence.

    keras-gates serve artifacts/model_repository &          # after `make demo` or
    python examples/streaming_client.py --model sunspots_stream [--url 127.0.0.1:8000]

Each request carries one year of the sunspot series with the Triton sequence parameters
(`sequence_id`, `sequence_start`, `sequence_end`); the server keeps the LSTM state between
requests, so each answer is the forecast for the next year given everything sent so far.
Uses the stock `tritonclient.http` client (binary tensors).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import numpy as np
import tritonclient.http as http

SCALE = 200.0  # as examples/sunspots.py


def stream_series(
    client: http.InferenceServerClient,
    model: str,
    series: np.ndarray,
    sequence_id: int,
    chunk: int = 1,
) -> Iterator[tuple[int, float]]:
    """Send ``series`` (time, features) ``chunk`` steps per request; yield (step, forecast)."""
    metadata = client.get_model_metadata(model)
    names = [t["name"] for t in metadata["inputs"]]
    sequence_name = names[0]
    output = metadata["outputs"][0]["name"]
    starts = range(0, len(series), chunk)
    for i, start in enumerate(starts):
        x = series[None, start : start + chunk].astype(np.float32)
        inputs = [http.InferInput(sequence_name, list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x)
        if "lengths" in names:
            inputs.append(http.InferInput("lengths", [1, 1], "INT32"))  # [B, 1], as on Triton
            inputs[1].set_data_from_numpy(np.array([[x.shape[1]]], np.int32))
        result = client.infer(
            model,
            inputs,
            outputs=[http.InferRequestedOutput(output)],
            sequence_id=sequence_id,
            sequence_start=i == 0,
            sequence_end=i == len(starts) - 1,
        )
        yield start + x.shape[1], float(result.as_numpy(output).reshape(-1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port of the server")
    parser.add_argument("--model", default="sunspots_stream", help="a streaming export")
    parser.add_argument("--years", type=int, default=30, help="how many recent years to send")
    parser.add_argument("--sequence-id", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="send 5 years")
    args = parser.parse_args(argv)
    from sunspots import load_series

    years, values = load_series()
    count = 5 if args.quick else args.years
    years, series = years[-count - 1 :], (values[-count - 1 :] / SCALE)[:, None]
    client = http.InferenceServerClient(args.url)
    if not client.is_model_ready(args.model):
        print(f"model {args.model!r} is not ready at {args.url}", file=sys.stderr)
        return 1
    print("sent year  value  forecast for next year  (truth)")
    for step, forecast in stream_series(client, args.model, series[:-1], args.sequence_id):
        year, sent, truth = years[step - 1], series[step - 1, 0], series[step, 0]
        print(f"{year:9d}  {sent * SCALE:5.1f}  {forecast * SCALE:22.1f}  ({truth * SCALE:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
