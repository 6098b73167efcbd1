"""Peer implementations for benchmarks.compare: the same models and recipes in other frameworks.

Each module is a script run in a process of its own by the runner:

  python -m benchmarks.peers.<module> --spec=SPEC.json --data=DATA.npz

SPEC (written by the runner from a configs/ file) gives the model's widths, the
optimizer, the batch size and the epochs; DATA holds the training images and the
test split as uint8. A peer prints one JSON line: its parameter count, every
epoch's seconds (the first includes compilation), images/s and test accuracy.
Peers import their own framework and numpy only, never fmnist_jax.
"""
