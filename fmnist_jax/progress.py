"""Per-epoch progress: a tqdm bar on a terminal, one plain line per epoch in logs.

Updated once per epoch from metrics the loop already fetched, so it adds no
device round trip and no measurable time.
"""

import os
import sys

from tqdm.auto import tqdm

_POSTFIX_KEYS = {
  "train/loss": "loss",
  "train/accuracy": "acc",
  "val/loss": "val_loss",
  "val/accuracy": "val_acc",
}


def _has_size(stream) -> bool:
  """Whether the terminal `stream` writes to reports a size (tqdm draws nothing in a 0x0 one)."""
  try:
    size = os.get_terminal_size(stream.fileno())
  except (AttributeError, OSError, ValueError):
    return False
  return size.columns > 0 and size.lines > 0


class EpochBar:
  """tqdm over epochs (loss/accuracy in the postfix, tqdm's ETA) or plain lines with an ETA.

  With early stopping (`patience`), the postfix shows `since_best=W/P`: W epochs since the
  best validation loss of the member nearest its best, so the run stops after P - W more
  epochs unless one improves; the ETA, to `num_epochs`, is then an upper bound.
  """

  def __init__(
    self,
    num_epochs: int,
    start_epoch: int = 0,
    *,
    enabled: bool = True,
    desc: str = "train",
    patience: int | None = None,
    stream=None,
  ):
    self.stream = stream or sys.stderr
    self.patience = patience
    self.enabled = enabled
    self.num_epochs = num_epochs
    # A terminal without a size (a pty opened without one: some containers and CI runners)
    # would show tqdm's bar as an empty line: plain lines there.
    self.interactive = enabled and self.stream.isatty() and _has_size(self.stream)
    self.epoch_seconds = []
    self.bar = (
      tqdm(
        total=num_epochs,
        initial=start_epoch,
        desc=desc,
        unit="epoch",
        file=self.stream,
        dynamic_ncols=True,
      )
      if self.interactive
      else None
    )

  def update(self, record: dict):
    postfix = {short: f"{record[key]:.4f}" for key, short in _POSTFIX_KEYS.items() if key in record}
    if self.patience and "since_best" in record:
      postfix["since_best"] = f"{record['since_best']}/{self.patience}"
    if record.get("members", 1) > 1:  # metrics are means over the members still training
      postfix["members"] = str(record["members"])
    if self.bar is not None:
      self.bar.set_postfix(postfix, refresh=False)
      self.bar.update(1)
    elif self.enabled:
      fields = " ".join(f"{k}={v}" for k, v in postfix.items())
      seconds = record.get("seconds", 0.0)
      self.epoch_seconds.append(seconds)
      # The first epoch includes compilation, so later epochs estimate the rest better.
      steady = self.epoch_seconds[1:] or self.epoch_seconds
      eta = (self.num_epochs - record["epoch"]) * sum(steady) / len(steady)
      print(
        f"epoch {record['epoch']}/{self.num_epochs} {fields} ({seconds:.1f}s, "
        f"ETA {tqdm.format_interval(eta)}{' at most' if self.patience else ''})",
        file=self.stream,
        flush=True,
      )

  def close(self):
    if self.bar is not None:
      self.bar.close()
