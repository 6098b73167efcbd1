"""The progress display: one plain line per epoch with an ETA when output is not a terminal."""

import fcntl
import io
import os
import struct
import termios

from fmnist_jax.progress import EpochBar


def test_plain_lines_carry_metrics_and_an_eta_from_steady_epochs():
  stream = io.StringIO()
  bar = EpochBar(5, stream=stream)
  bar.update({"epoch": 1, "train/loss": 0.5, "val/accuracy": 0.8, "seconds": 30.0})
  bar.update({"epoch": 2, "train/loss": 0.4, "val/accuracy": 0.85, "seconds": 2.0})
  bar.close()
  first, second = stream.getvalue().splitlines()
  assert first.startswith("epoch 1/5 loss=0.5000 val_acc=0.8000")
  assert "ETA 02:00" in first  # 4 epochs left at 30 s (compile included: only estimate)
  assert "ETA 00:06" in second  # 3 left at the steady 2 s


def test_disabled_bar_prints_nothing():
  stream = io.StringIO()
  bar = EpochBar(3, enabled=False, stream=stream)
  bar.update({"epoch": 1, "train/loss": 0.5})
  assert stream.getvalue() == ""


def test_with_early_stopping_the_line_says_how_near_the_stop_is_and_the_eta_is_a_bound():
  stream = io.StringIO()
  bar = EpochBar(100, patience=10, stream=stream)
  bar.update({"epoch": 1, "val/loss": 0.3, "since_best": 0, "seconds": 3.0})
  bar.update({"epoch": 2, "val/loss": 0.4, "since_best": 1, "members": 2, "seconds": 2.0})
  first, second = stream.getvalue().splitlines()
  assert "since_best=0/10" in first and "since_best=1/10 members=2" in second
  assert second.endswith("ETA 03:16 at most)")  # 98 epochs at 2 s, unless it stops sooner
  without = io.StringIO()
  EpochBar(5, stream=without).update({"epoch": 1, "since_best": 0, "seconds": 1.0})
  assert "since_best" not in without.getvalue() and "at most" not in without.getvalue()


def test_a_terminal_without_a_size_gets_plain_lines_not_an_invisible_bar():
  parent, child = os.openpty()  # a new pty reports 0 rows x 0 columns, as some containers do
  with os.fdopen(child, "w") as terminal:
    assert terminal.isatty() and os.get_terminal_size(child) == (0, 0)
    assert not EpochBar(3, stream=terminal).interactive  # tqdm would draw nothing there
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    bar = EpochBar(3, stream=terminal)
    assert bar.interactive
    bar.close()
  os.close(parent)
