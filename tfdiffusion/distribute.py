"""Choosing and building a `tf.distribute` strategy (TPU, GPUs, several workers, CPU) and the precision policy.

`get_strategy("auto")` finds what the machine has: a reachable TPU (Colab,
a TPU VM, `TPU_NAME`), else a cluster described by `TF_CONFIG` (several
workers), else all local GPUs, else the CPU. The same training script then
runs everywhere: build the model inside `strategy.scope()`.
"""

import json
import os
from typing import Callable, Optional

import keras
import tensorflow as tf

from tfdiffusion import validation

__all__ = ["PRECISIONS", "STRATEGIES", "check_global_batch", "describe", "get_strategy", "is_chief", "set_precision"]

STRATEGIES = ("auto", "tpu", "gpu", "multiworker", "cpu")
# Command-line names of Keras' mixed precision policies.
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}

_TPU_STRATEGIES = {}  # TPU address -> strategy: the TPU system is initialised once per process


def _tpu_address() -> Optional[str]:
    """The TPU this process can reach: Colab's, `TPU_NAME`, or a TPU VM's local chips; None if none."""
    if os.environ.get("COLAB_TPU_ADDR"):
        return "grpc://" + os.environ["COLAB_TPU_ADDR"]
    if os.environ.get("TPU_NAME"):
        return os.environ["TPU_NAME"]
    if os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0"):
        return "local"
    return None


def _tpu_strategy(address: Optional[str]) -> tf.distribute.Strategy:
    address = address or _tpu_address()
    if address is None:
        raise ValueError("`strategy` 'tpu': no TPU is reachable (no COLAB_TPU_ADDR or TPU_NAME, no local TPU "
                         "chips). On Colab pick a TPU runtime; elsewhere set TPU_NAME or pass tpu_address.")
    if address not in _TPU_STRATEGIES:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="" if address == "local" else address)
            if address != "local":
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as error:
            raise ValueError(f"`strategy` 'tpu': the TPU at {address!r} could not be initialised: "
                             f"{' '.join(str(error).split())[:300]}") from None
        _TPU_STRATEGIES[address] = tf.distribute.TPUStrategy(resolver)
    return _TPU_STRATEGIES[address]


def _check_tf_config() -> dict:
    """TF_CONFIG parsed and checked: a cluster with workers, and this task among them."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError("`strategy` 'multiworker' needs TF_CONFIG (JSON: {\"cluster\": {\"worker\": "
                         "[\"host:port\", ...]}, \"task\": {\"type\": \"worker\", \"index\": i}}); it is not set")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}. Received: {text[:200]!r}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    workers = cluster.get("worker") if isinstance(cluster, dict) else None
    if not isinstance(workers, list) or not workers or not all(isinstance(w, str) and ":" in w for w in workers):
        raise ValueError("TF_CONFIG must name the workers as cluster.worker = [\"host:port\", ...]. "
                         f"Received: {text[:200]!r}")
    if not isinstance(task, dict) or task.get("type") not in ("worker", "chief") or not validation.is_int(
            task.get("index")) or not 0 <= task["index"] < len(cluster.get(task["type"], [])):
        raise ValueError("TF_CONFIG must say which task this process is: task = {\"type\": \"worker\", \"index\": i} "
                         f"with i in [0, {len(workers)}). Received: {text[:200]!r}")
    return config


def get_strategy(name: str = "auto", tpu_address: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy called `name`, built once and described in one line.

    Args:
        name: "auto" (a reachable TPU, else TF_CONFIG's workers, else all
            local GPUs, else the CPU), "tpu" (`TPUStrategy` through
            `TPUClusterResolver`: Colab, TPU VMs, `TPU_NAME`; the TPU system
            is initialised once), "gpu" (`MirroredStrategy` over the local
            GPUs), "multiworker" (`MultiWorkerMirroredStrategy` from
            `TF_CONFIG`), or "cpu" (the default strategy: one device).
        tpu_address: the TPU to connect to ("grpc://host:port", a TPU name,
            or "local"); default: found from the environment.
        log: where the one-line description goes (e.g. `print`); None: nowhere.

    Returns:
        The strategy; build and compile the model inside `strategy.scope()`.

    Raises:
        ValueError: an unknown name, no TPU reachable, no GPU, or a
            malformed TF_CONFIG, before anything is built.
    """
    validation.check_choice("strategy", name, STRATEGIES)
    if name == "auto":
        if tpu_address or _tpu_address():
            name = "tpu"
        elif os.environ.get("TF_CONFIG"):
            name = "multiworker"
        elif tf.config.list_physical_devices("GPU"):
            name = "gpu"
        else:
            name = "cpu"
    if name == "tpu":
        strategy = _tpu_strategy(tpu_address)
    elif name == "gpu":
        gpus = tf.config.list_logical_devices("GPU")
        if not gpus:
            raise ValueError("`strategy` 'gpu': TensorFlow sees no GPU on this machine (tf.config."
                             "list_physical_devices('GPU') is empty). Use 'cpu' or 'auto'.")
        strategy = tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    elif name == "multiworker":
        _check_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    if log is not None:
        log(describe(strategy))
    return strategy


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line: the strategy's kind, its devices and the replica count."""
    kind = type(strategy).__name__
    if strategy.num_replicas_in_sync == 1 and "Default" in kind:
        kind = "one device (no distribution)"
        gpus = tf.config.list_logical_devices("GPU")
        devices = (gpus[0].name,) if gpus else ("/cpu:0",)
    else:
        devices = strategy.extended.worker_devices
    shown = ", ".join(str(d) for d in list(devices)[:8]) + (", ..." if len(devices) > 8 else "")
    return f"Strategy: {kind} on {shown}: {strategy.num_replicas_in_sync} replica(s)"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: True except on the non-chief workers of a cluster.

    The chief is TF_CONFIG's "chief" task, else worker 0 (the
    `MultiWorkerMirroredStrategy` convention). Every worker still runs every
    step, collective and sampling call; only the chief writes.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def check_global_batch(batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """`batch_size` (the global batch) checked to split evenly into the strategy's replicas.

    Raises:
        ValueError: it does not divide by the replica count.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"The global batch size must be divisible by the number of replicas ({replicas}: "
                         f"{describe(strategy)}), so that every replica gets the same static shape. Received: "
                         f"batch_size={batch_size}; use {max(replicas, batch_size // replicas * replicas)} "
                         f"or {(batch_size // replicas + 1) * replicas}")
    return batch_size


def set_precision(name: str) -> str:
    """Sets Keras' global dtype policy from a command-line name; returns the policy name.

    Args:
        name: "fp32" (float32), "bf16" (`mixed_bfloat16`: TPUs, and CPUs with
            AVX512_BF16 or AMX) or "fp16" (`mixed_float16`: GPUs, with loss
            scaling; refused on a machine without a GPU, where float16
            kernels are slow or missing).

    Raises:
        ValueError: an unknown name, or fp16 without a GPU.
    """
    validation.check_choice("precision", name, tuple(PRECISIONS))
    if name == "fp16" and not tf.config.list_physical_devices("GPU"):
        raise ValueError("`precision` 'fp16' (mixed_float16) needs a GPU; this machine has none. Use 'bf16' "
                         "(TPUs and CPUs with AVX512_BF16/AMX) or 'fp32'.")
    keras.mixed_precision.set_global_policy(PRECISIONS[name])
    return PRECISIONS[name]
