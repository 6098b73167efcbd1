"""Waiting for a quiet machine before a timed run (the shared 2-core machines are noisy)."""

import pathlib
import subprocess

# Beside the checkout, on the project's machines.
WAIT_QUIET = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tools" / "wait-quiet"


def wait_for_quiet(enabled: bool = True) -> None:
  """Runs ../shared/tools/wait-quiet (beside the checkout) where present; else returns."""
  if enabled and WAIT_QUIET.exists():
    subprocess.run([str(WAIT_QUIET)], check=False, capture_output=True)
