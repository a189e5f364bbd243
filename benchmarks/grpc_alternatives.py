"""What grpcio itself costs per unary call, server by server: a ``ModelInfer`` that answers a
fixed response without a model, on grpc.aio (on asyncio's loop, and on uvloop as in
``keras-gates serve``; and two grpc.aio servers on one port: two completion queues), on the
synchronous server with a thread pool, and on the synchronous server handing each call to an
asyncio loop (the way a synchronous transport would feed the scheduler). Each runs in its own
process, driven by ``load_clients.py`` (``grpc-unary``); prints calls/s and server CPU per call.

    python benchmarks/grpc_alternatives.py --concurrency 32 --duration 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
KINDS = ("aio", "aio-uvloop", "aio-2cq", "sync-4", "sync-16", "sync-loop-16")


def _response():
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse(model_name="model", model_version="1")
    response.outputs.add(name="y", datatype="FP32", shape=[1, 1])
    response.raw_output_contents.append(b"\0\0\0\0")
    return response


def serve(kind: str, port: int) -> None:
    """Serve the echo ``ModelInfer`` with ``kind`` until killed."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    response = _response()
    address = f"127.0.0.1:{port}"
    if kind.startswith("aio"):

        class Echo(service_pb2_grpc.GRPCInferenceServiceServicer):
            async def ModelInfer(self, request, context):
                return response

        async def main():
            servers = []
            for _ in range(2 if kind == "aio-2cq" else 1):  # two servers: two completion queues
                server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
                service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
                server.add_insecure_port(address)
                await server.start()
                servers.append(server)
            print("ready", flush=True)
            await asyncio.Event().wait()

        if kind == "aio-uvloop":  # the loop uvicorn runs when uvloop is installed
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
        return
    threads = int(kind.rsplit("-", 1)[1])
    loop = None
    if kind.startswith("sync-loop"):
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

    async def answer():
        return response

    class SyncEcho(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):
            if loop is None:
                return response
            return asyncio.run_coroutine_threadsafe(answer(), loop).result()

    server = grpc.server(futures.ThreadPoolExecutor(threads))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(SyncEcho(), server)
    server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    import load_clients

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    spec = {"grpc": f"127.0.0.1:{args.port}", "model": "model", "steps": 100, "features": 32}
    spec["chunks"] = 10
    print("| gRPC server | concurrency | calls/s | p50 (ms) | server CPU (ms/call) |")
    print("|---|---:|---:|---:|---:|")
    for kind in args.kinds.split(","):
        command = [sys.executable, __file__, "--serve", kind, "--port", str(args.port)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            load_clients.drive("grpc-unary", spec, args.concurrency, 1.0)  # warm up
            before = cpu_seconds(proc.pid)
            result = load_clients.drive("grpc-unary", spec, args.concurrency, args.duration)
            calls = result["rps"] * result["seconds"]
            ms = (cpu_seconds(proc.pid) - before) * 1000 / calls
            print(
                f"| {kind} | {args.concurrency} | {result['rps']:.0f} | "
                f"{result['p50_ms']:.2f} | {ms:.3f} |",
                flush=True,
            )
        finally:
            proc.kill()
            proc.wait()
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
