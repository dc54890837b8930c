"""Preemption: SIGTERM (a TPU VM's maintenance event, a scheduler's kill) -> save and stop.

One process: a SIGTERM handler sets a flag that the loop checks before each step. Several
processes: every process must save at the same step, so the loop asks jax's coordination
service (multihost_utils.reached_preemption_sync_point), which agrees on one step across
processes after any of them was signalled.
"""

import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatch:

  def __init__(self):
    self.requested = False
    self._multi = jax.process_count() > 1
    self._previous = None
    if not self._multi:
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    logging.warning("signal %d: saving a checkpoint at the next step boundary", signum)
    self.requested = True

  def reached(self, step):
    """True once a preemption was requested; the loop then saves ``step`` and stops."""
    if self._multi and not self.requested:
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    """Puts the previous SIGTERM handler back (the run is over)."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
