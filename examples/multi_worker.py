"""Train a GatedLSTM with ``tf.distribute.MultiWorkerMirroredStrategy`` across worker processes.

Run on one machine (two workers on 127.0.0.1, then a single-process run to compare with)::

    python examples/multi_worker.py --out artifacts/multi_worker

On a real cluster, start the same script on every machine with the whole cluster and its own
index (each worker reads the full data set; tf.data shards it, each global batch split evenly)::

    python examples/multi_worker.py --cluster host1:12345,host2:12345 --worker 0 --out run/
    python examples/multi_worker.py --cluster host1:12345,host2:12345 --worker 1 --out run/

Worker 0 (the chief) writes ``weights.npz`` and ``model.keras``. The gradient of each global batch
is the mean over all workers' samples, so the weights equal a single-process run on the same
global batches up to float32 summation order.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

GLOBAL_BATCH = 16
TOLERANCE = 1e-5  # float32: the all-reduce sums the per-worker gradients in another order


def make_data(samples: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy running-sum task: the target is the mean of the first feature over time."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 12, 3)).astype("float32")
    y = x[:, :, :1].mean(axis=1) + 0.01 * rng.standard_normal((samples, 1)).astype("float32")
    return x, y


def build_model():
    import keras

    from keras_gates import GatedLSTM

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((12, 3)), GatedLSTM(8, name="gated_lstm"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def train(model, x, y, epochs: int):
    """Fit on global batches of GLOBAL_BATCH, in order: with ``model.fit`` in one process."""
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=epochs, shuffle=False, verbose=0)
    return model


def train_distributed(strategy, model, x, y, epochs: int):
    """The same training under ``strategy``: tf.data splits each global batch across workers,
    each computes its share of the mean loss, and the optimizer all-reduces the gradients.

    A custom loop, because ``model.fit`` fails under MultiWorkerMirroredStrategy in Keras 3.15
    (its symbolic build calls ``strategy.reduce`` on the (x, y) tuple of per-replica batches:
    "Attempt to convert a value (PerReplica ...) to a Tensor").
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).with_options(options)
    batches = strategy.experimental_distribute_dataset(data)

    @tf.function
    def step(batch):
        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                per_sample = tf.reduce_mean(tf.square(model(xb, training=True) - yb), axis=-1)
                loss = tf.nn.compute_average_loss(per_sample, global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce("SUM", losses, axis=None)

    for _ in range(epochs):
        for batch in batches:
            step(batch)
    return model


def run_worker(cluster: list[str], index: int, out: Path, epochs: int, samples: int) -> None:
    """One worker: join the cluster (TF_CONFIG), train under the strategy, chief saves."""
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
    )
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = make_data(samples)
    with strategy.scope():
        model = build_model()
        model.optimizer.build(model.trainable_variables)
    train_distributed(strategy, model, x, y, epochs)
    if index == 0:
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "weights.npz", *model.get_weights())
        model.save(out / "model.keras")
        print(f"worker 0 of {len(cluster)}: saved {out / 'weights.npz'}")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch_local(workers: int, out: Path, epochs: int, samples: int) -> float:
    """Run ``workers`` processes on loopback, then the single-process reference; return the
    largest weight difference."""
    cluster = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    common = ["--cluster", ",".join(cluster), "--out", str(out), "--epochs", str(epochs)]
    common += ["--samples", str(samples)]
    procs = [
        subprocess.Popen([sys.executable, __file__, *common, "--worker", str(i)])
        for i in range(workers)
    ]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(codes):
        raise SystemExit(f"a worker failed (exit codes {codes})")
    distributed = np.load(out / "weights.npz")
    x, y = make_data(samples)
    single = train(build_model(), x, y, epochs).get_weights()
    initial = build_model().get_weights()
    moved = max(float(np.abs(a - b).max()) for a, b in zip(single, initial))
    diff = max(float(np.abs(distributed[f"arr_{i}"] - w).max()) for i, w in enumerate(single))
    print(
        f"{workers} workers x {GLOBAL_BATCH // workers} samples per global batch of {GLOBAL_BATCH}"
    )
    print(f"training moved the weights by up to {moved:.3g}")
    print(f"max |multi-worker - single-process| weight difference: {diff:.3g}")
    return diff


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/multi_worker"))
    parser.add_argument("--workers", type=int, default=2, help="local workers to launch (2)")
    parser.add_argument("--cluster", help="host:port of every worker, comma-separated")
    parser.add_argument("--worker", type=int, help="this worker's index in --cluster")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="a short run (2 epochs, 64 samples)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.samples = 2, 64
    if args.samples % GLOBAL_BATCH:
        parser.error(f"--samples must be a multiple of the global batch {GLOBAL_BATCH}")
    if (args.cluster is None) != (args.worker is None):
        parser.error("--cluster and --worker go together (or leave both out to run locally)")
    if args.cluster is not None:
        run_worker(args.cluster.split(","), args.worker, args.out, args.epochs, args.samples)
        return
    diff = launch_local(args.workers, args.out, args.epochs, args.samples)
    if diff > TOLERANCE:
        raise SystemExit(f"multi-worker weights differ from single-process by {diff:.3g}")
    print(f"equal within {TOLERANCE:g}")


if __name__ == "__main__":
    main()
