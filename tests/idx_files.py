"""Writes IDX files for tests, independently of fmnist_jax.data (so it can act as an oracle)."""

import gzip
import pathlib
import struct

import numpy as np

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
  """Encodes an array as an IDX file: big-endian magic, dimensions, then uint8 data."""
  header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path: pathlib.Path, content: bytes) -> None:
  """Writes IDX content, gzipped if the name ends in .gz."""
  path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
