"""TensorFlow's CPU thread budget, set once per process (shared by training, benches, report)."""

from __future__ import annotations


def set_tensorflow_threads(threads: int) -> str:
    """Give TensorFlow ``threads`` intra-op threads (one inter-op); returns what it really has.

    TensorFlow fixes its thread pools when it first runs an op, so in a process that already used
    it (e.g. a test session) the budget cannot change: the measurement then runs with what it has,
    and the returned string says so rather than pretending the request was applied.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        current = tf.config.threading.get_intra_op_parallelism_threads()
        return f"{current or 'default'} (already initialised)"
    return str(threads)
