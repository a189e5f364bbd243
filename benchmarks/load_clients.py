"""Closed-loop load generators for ``serve_load.py``: gRPC unary calls (``grpc-unary``), gRPC
``ModelStreamInfer`` sequences (``grpc-stream``), HTTP requests with binary tensors
(``http-unary``) or JSON (``http-json``), and HTTP sequences (``http-stream``: one request per
chunk, as over HTTP a stream must be sent). The same generator drives every transport, so their
figures compare; wrk can drive the HTTP cells instead (``serve_load.py --http-client wrk``).

:func:`drive` spreads ``concurrency`` clients over several processes (each an asyncio loop with
its own connections: gRPC channels, keep-alive HTTP/1.1 sockets), starts them together and merges
their latencies. Every request is serialized before the clock starts (gRPC messages as bytes, with
identity serializers), so a client costs little more than its socket calls; the client processes'
CPU time is reported next to the rates, so a reader can see whether the generator or the server
was the limit.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import resource
import time

import numpy as np

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
_OK_STREAM = 0x12  # a ModelStreamInferResponse starting with field 2 (infer_response): no error


def grpc_request(model: str, x: np.ndarray, seq_id=None, start=False, end=False) -> bytes:
    """A serialized ``ModelInferRequest`` with ``x`` in ``raw_input_contents``."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    if seq_id is not None:
        request.parameters["sequence_id"].int64_param = seq_id
        request.parameters["sequence_start"].bool_param = start
        request.parameters["sequence_end"].bool_param = end
    return request.SerializeToString()


def http_request(
    model: str, x: np.ndarray, seq_id=None, start=False, end=False, binary: bool = True
) -> bytes:
    """A whole HTTP/1.1 request with a binary tensor body (``binary``) or a JSON one."""
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape)}
    if binary:
        header = {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    else:
        header = {"inputs": [{**tensor, "data": x.ravel().tolist()}]}
    if seq_id is not None:
        header["parameters"] = {"sequence_id": seq_id, "sequence_start": start, "sequence_end": end}
    head = json.dumps(header).encode()
    body = head + x.tobytes() if binary else head
    lines = [
        f"POST /v2/models/{model}/infer HTTP/1.1",
        "Host: bench",
        f"Content-Type: application/{'octet-stream' if binary else 'json'}",
        f"Content-Length: {len(body)}",
    ]
    if binary:
        lines.append(f"Inference-Header-Content-Length: {len(head)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _http_call(reader, writer, request: bytes) -> bool:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return head.startswith(b"HTTP/1.1 200")


async def _client(mode: str, spec: dict, index: int, deadline_box: list, out: dict) -> None:
    """One closed-loop client; appends ``(latency_s, ok)`` to ``out`` until the deadline."""
    latencies, errors = out["latencies"], out
    x = np.zeros((1, spec["steps"], spec["features"]), np.float32)
    x[:] = np.random.default_rng(index).standard_normal(x.shape)
    chunks = spec["chunks"]
    part = x[:, : max(1, spec["steps"] // chunks)]
    seq_id = 1_000_000 * (os.getpid() % 1000) + index + 1
    if mode.startswith("grpc"):
        import grpc

        channel = _channel(spec["grpc"], spec.get("grpc_connections", "process"), out)
        if mode == "grpc-unary":
            call = channel.unary_unary(INFER)
            request = grpc_request(spec["model"], x)
            send = lambda: call(request)  # noqa: E731
        else:
            stream = channel.stream_stream(STREAM)()
            requests = [
                grpc_request(spec["stream_model"], part, seq_id, i == 0, i == chunks - 1)
                for i in range(chunks)
            ]
    else:
        host, port = spec["http"].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        if mode in ("http-unary", "http-json"):
            requests = [http_request(spec["model"], x, binary=mode == "http-unary")]
        else:
            requests = [
                http_request(spec["stream_model"], part, seq_id, i == 0, i == chunks - 1)
                for i in range(chunks)
            ]
    i = 0
    while deadline_box[0] == 0 or time.perf_counter() < deadline_box[0]:
        start = time.perf_counter()
        if mode == "grpc-unary":
            try:
                await send()
                ok = True
            except grpc.RpcError:
                ok = False
        elif mode == "grpc-stream":
            await stream.write(requests[i % chunks])
            ok = (await stream.read())[0] == _OK_STREAM
        else:
            ok = await _http_call(reader, writer, requests[i % len(requests)])
        if deadline_box[0]:
            latencies.append(time.perf_counter() - start)
            errors["errors"] += not ok
        i += 1
        if not deadline_box[0] and i >= chunks:  # warm-up: one whole sequence, then wait
            out["warm"] += 1
            await out["go"].wait()
    if mode == "grpc-stream":  # finish the open sequence so that the server forgets it
        while i % chunks:
            await stream.write(requests[i % chunks])
            await stream.read()
            i += 1
        await stream.done_writing()
    elif mode == "http-stream":
        while i % chunks:
            await _http_call(reader, writer, requests[i % chunks])
            i += 1
    if mode.startswith("grpc"):
        if channel is not out.get("channel"):
            await channel.close()
    else:
        writer.close()


def _channel(address: str, connections: str, out: dict):
    """A gRPC channel: the process's one (``"process"``: one HTTP/2 connection shared by its
    clients, as a client application's ``InferenceServerClient`` shared by its threads) or a new
    one per client (``"client"``)."""
    import grpc

    if connections == "client":
        return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    if "channel" not in out:
        out["channel"] = grpc.aio.insecure_channel(address)
    return out["channel"]


def _process(mode: str, spec: dict, clients: range, seconds: float, ready, go, results) -> None:
    async def main():
        box = [0.0]
        out = {"latencies": [], "errors": 0, "warm": 0, "go": asyncio.Event()}
        tasks = [asyncio.create_task(_client(mode, spec, i, box, out)) for i in clients]
        while out["warm"] < len(tasks):  # connections made, one warm-up sequence each
            await asyncio.sleep(0.05)
        ready.put(os.getpid())
        await asyncio.to_thread(go.wait)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        box[0] = time.perf_counter() + seconds
        out["go"].set()
        await asyncio.gather(*tasks)
        if "channel" in out:
            await out["channel"].close()
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
        results.put((out["latencies"], out["errors"], cpu))

    asyncio.run(main())


def drive(mode: str, spec: dict, concurrency: int, seconds: float, processes: int = 4) -> dict:
    """Run ``concurrency`` clients of ``mode`` for ``seconds``; returns rate, p50/p99, errors and
    the client processes' CPU use (in cores)."""
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    count = min(processes, concurrency)
    shares = [range(p, concurrency, count) for p in range(count)]
    workers = [
        context.Process(target=_process, args=(mode, spec, share, seconds, ready, go, results))
        for share in shares
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=120)
    go.set()
    started = time.perf_counter()
    latencies, errors, cpu = [], 0, 0.0
    for _ in workers:
        part, part_errors, part_cpu = results.get(timeout=seconds + 120)
        latencies += part
        errors += part_errors
        cpu += part_cpu
    elapsed = time.perf_counter() - started
    for worker in workers:
        worker.join(30)
    lat = np.array(latencies) * 1000
    return {
        "rps": len(lat) / seconds,
        "seconds": seconds,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "errors": errors,
        "client_cores": cpu / max(elapsed, seconds),
    }
