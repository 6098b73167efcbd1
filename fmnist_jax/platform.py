"""Process-level XLA settings, applied by the entry points before jax starts its backend.

On XLA:CPU, XNNPACK graph fusion makes the scanned train step 1.1-1.4x faster
(measured on a 2-core machine, MLP and CNN, interleaved runs). It is set only
if the user has not set it, and only before jax is imported.
"""

import os
import sys

CPU_FLAGS = ("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",)


def configure_xla():
  """Adds CPU_FLAGS to XLA_FLAGS unless already given; a no-op once jax is imported."""
  if "jax" in sys.modules:
    return
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in CPU_FLAGS:
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  os.environ["XLA_FLAGS"] = flags
