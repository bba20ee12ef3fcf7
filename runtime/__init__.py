"""roiedge runtime: TF-free inference of exported detector artifacts (numpy + one interpreter).

This package imports nothing else of roiedge and never TensorFlow, so that copying
``runtime/`` and ``artifacts/`` to a device is enough to run it.
"""
