"""`ReplicaCompiledModel`: a Keras model mix-in that runs XLA per replica under `tf.distribute` strategies.

Keras switches its whole-step XLA compilation off under any distribution
strategy, and forcing it under `MirroredStrategy` fails (the replicas'
variables live on other devices). A model with this mix-in compiles each
replica's part of a step (`_per_replica_compiled`) with XLA on its own
device instead, and works around two places where Keras 3 fails under
`MultiWorkerMirroredStrategy` (the build before `fit`, the logs' reduction).
The model's `__init__` must set `self._compiled = {}`.
"""

import tensorflow as tf

__all__ = ["ReplicaCompiledModel"]


class ReplicaCompiledModel:
    """Mix-in for a `keras.Model` (list it first): XLA per replica and multi-worker fixes."""

    # Set when a train or test function is made; False until then (and on one device).
    _xla_per_replica = False

    def make_test_function(self, force=False):
        """Keras' test function; under several replicas with XLA, each compiles its own part (as training)."""
        # A new test function (e.g. after `set_bpd_evaluation`) retraces the replicas' parts too.
        self._compiled = {key: fn for key, fn in self._compiled.items() if key[0] != "evaluation"}
        return self._without_whole_step_xla(super().make_test_function, force)

    def _without_whole_step_xla(self, make_function, force):
        """`make_function(force)` with Keras' whole-step XLA off where the replicas compile their own part."""
        strategy = self.distribute_strategy
        self._xla_per_replica = bool(self.jit_compile) and strategy.num_replicas_in_sync > 1 and not isinstance(
            strategy, tf.distribute.TPUStrategy)
        if not self._xla_per_replica:
            return make_function(force=force)
        self._jit_compile = False  # Keras' own whole-step compilation; the replicas compile their part
        try:
            return make_function(force=force)
        finally:
            self._jit_compile = True

    def _per_replica_compiled(self, name, fn):
        """`fn` as an XLA-compiled `tf.function` of this replica's own (one per replica and name).

        One function object per replica: each traces against its replica's
        copies of the variables on its own device.
        """
        replica = tf.distribute.get_replica_context()
        replica_id = tf.get_static_value(replica.replica_id_in_sync_group) if replica is not None else 0
        if replica_id is None:  # not known while tracing: compile nothing rather than guess
            return fn
        key = (name, int(replica_id))
        if key not in self._compiled:
            self._compiled[key] = tf.function(fn, jit_compile=True, autograph=False)
        return self._compiled[key]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' build before `fit`/`evaluate`, without a data batch when nothing needs one.

        Keras reduces the first distributed batch across the replicas to learn
        its shapes, which fails under `MultiWorkerMirroredStrategy` (a
        collective over a tuple of per-replica values). This model's layers
        are built when it is made, and it compiles no loss or metrics objects,
        so only the optimizer may remain to build.
        """
        needs_data = (not all(layer.built for layer in self._flatten_layers())
                      or (self._compile_metrics is not None and not self._compile_metrics.built)
                      or (self._compile_loss is not None and not self._compile_loss.built))
        if needs_data or self._distribute_strategy is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=())

    def _reducible_logs(self, logs):
        """`logs` as Keras can reduce them across the workers of a cluster (unchanged elsewhere).

        Keras averages a cluster's logs with a reduction over axis 0, which a
        scalar lacks; the metrics already hold the global values (their
        variables are synchronised), so each gets a leading axis of 1.
        """
        strategy = self.distribute_strategy
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
                strategy.extended._in_multi_worker_mode():
            return {name: value[None] for name, value in logs.items()}
        return logs
