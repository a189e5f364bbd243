"""Profile ``keras-gates serve`` under load: py-spy samples the server while ``load_clients.py``
drives one transport, and the result is kept as a small text file.

    python benchmarks/serve_profile.py grpc-unary --concurrency 32 --out benchmarks/profiles

writes ``MODE-cC.txt``: the functions with the most samples, by own time and by time below them,
over every thread of the server (``--native`` adds C frames). Needs py-spy on the PATH (``pip
install py-spy``) and the permission to attach to a child process (ptrace).
Modes: those of ``load_clients.drive`` (grpc-unary, grpc-stream, http-unary, http-json,
http-stream).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load_clients  # noqa: E402
import serve_load  # noqa: E402


def summarize(raw: Path, top: int = 40) -> str:
    """The functions with the most samples in py-spy's collapsed stacks: own and total."""
    own, total, samples = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples over every thread (idle threads excluded)", "", "own time:"]
    lines += [f"{100 * n / samples:6.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "total time (the frame and everything below it):"]
    lines += [f"{100 * n / samples:6.1f}%  {f}" for f, n in total.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", help="grpc-unary, grpc-stream, http-unary, http-json, http-stream")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE / "profiles")
    parser.add_argument("--tag", default="", help="suffix of the output files' names")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy")
    if spy is None:
        print("serve_profile: py-spy is missing; pip install py-spy")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.mode}-c{args.concurrency}{args.tag}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        serve_load.build_model(work / "repo", 128, 32)
        serve_load.build_model(work / "repo", 128, 32, streaming=True)
        proc, url = serve_load.start_server(work / "repo", 8865, args.max_batch_size, 2.0, 1)
        try:
            spec = serve_load.client_spec(url, 100, 32, 10)
            load_clients.drive(args.mode, spec, args.concurrency, 1.0)  # warm up
            raw = work / "raw.txt"
            command = [spy, "record", "-p", str(proc.pid), "-d", str(int(args.duration)), "-r"]
            command += ["200", "-f", "raw", "-o", str(raw)] + (["-n"] if args.native else [])
            spying = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
            result = load_clients.drive(args.mode, spec, args.concurrency, args.duration)
            spying.wait(60)
            if not raw.exists():
                print(spying.stderr.read().decode())
                return 1
            header = (
                f"py-spy of keras-gates serve, {args.mode} c={args.concurrency}, "
                f"max batch {args.max_batch_size}: {result['rps']:.0f} req/s, "
                f"p50 {result['p50_ms']:.2f} ms\n"
            )
            (args.out / f"{name}.txt").write_text(header + summarize(raw))
        finally:
            serve_load.stop_server(proc)
    print((args.out / f"{name}.txt").read_text()[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
