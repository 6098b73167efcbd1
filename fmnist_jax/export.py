"""A trained run as one portable file: a serialized `jax.export` function with its weights.

  python -m fmnist_jax.export --workdir=runs/cnn [--out=runs/cnn/model.jax_exported]

The file holds the StableHLO of `logits = f(images)` for uint8 images
[batch, 28, 28] (any batch size) -> float32 logits [members, batch, 10], the
weights the run's results report baked in, for CPU, CUDA and TPU. Loading it
needs jax only, not fmnist_jax, flax or the config:

  import jax, numpy as np
  exported = jax.export.deserialize(open("runs/cnn/model.jax_exported", "rb").read())
  logits = exported.call(np.zeros((5, 28, 28), np.uint8))   # [members, 5, 10]
"""

import pathlib
import sys

import jax
import numpy as np

from fmnist_jax import cli
from fmnist_jax.errors import UserError

PLATFORMS = ("cpu", "cuda", "tpu")
FILE_NAME = "model.jax_exported"


def export_run(workdir: str | pathlib.Path, platforms=PLATFORMS) -> jax.export.Exported:
  """The run's members as an exported function of uint8 images with a symbolic batch size."""
  from fmnist_jax import runs

  run = runs.load_run(workdir)

  def logits(images_Bx28x28):  # the run's own batched, vmapped prediction, weights baked in
    return run.trainer.predict_members(run.state, images_Bx28x28)

  (batch,) = jax.export.symbolic_shape("batch")
  images = jax.ShapeDtypeStruct((batch, 28, 28), np.uint8)
  return jax.export.export(jax.jit(logits), platforms=platforms)(images)


def main(argv: list[str]) -> int:
  import argparse

  parser = argparse.ArgumentParser(
    prog="python -m fmnist_jax.export", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--workdir", required=True, help="a finished run, e.g. runs/cnn")
  parser.add_argument("--out", help=f"output file; default <workdir>/{FILE_NAME}")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out or pathlib.Path(args.workdir) / FILE_NAME)
  try:
    exported = export_run(args.workdir)
    out.write_bytes(exported.serialize())
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    return cli.EXIT_USER_ERROR
  except OSError as error:
    print(f"error: cannot write {out}: {error.strerror}; pass a writable --out", file=sys.stderr)
    return cli.EXIT_USER_ERROR
  print(
    f"Wrote {out} ({out.stat().st_size / 1e6:.1f} MB): uint8 [batch, 28, 28] -> logits "
    f"[members, batch, 10] on {', '.join(PLATFORMS)}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
