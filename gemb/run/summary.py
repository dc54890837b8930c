"""TensorBoard logging without TensorFlow.

This file owns the run's TensorBoard event files (<workdir>/tensorboard/). clu.metric_writers
and flax.metrics.tensorboard import TensorFlow; here the tensorboard package writes the event
files itself (EventFileWriter + summary protos). Scalars are legacy ``simple_value`` summaries,
which TensorBoard's scalar dashboard and EventAccumulator.Scalars() read; text is a string
tensor tagged for the text plugin (rendered as markdown).

Only one process should write: other jax processes construct the writer with
``enabled=False``, which makes every method a no-op and creates no file.
"""
import numbers
import sys
import time
import types

# tensorboard.compat imports TensorFlow whenever it is installed (it is, where SavedModel
# export is used) unless the module "tensorboard.compat.notf" exists: TensorBoard's own
# switch to force its TF stub. Importing TF here would cost seconds per process and, on GPU
# hosts, make TF reserve accelerator memory next to JAX. The stub writes local paths, and
# gs:// and other URLs through fsspec.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

from tensorboard.compat.proto import event_pb2  # noqa: E402
from tensorboard.compat.proto import summary_pb2  # noqa: E402
from tensorboard.plugins.text import summary_v2 as text_summary  # noqa: E402
from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: E402


class SummaryWriter:
  """Writes scalars and text to a TensorBoard event file in `logdir`.

  Events are queued and written by a background thread; call flush() to make everything
  logged so far readable, and close() at the end of the run. Also a context manager.
  """

  def __init__(self, logdir, *, enabled=True, flush_secs=60):
    """Args:
      logdir: directory for the event file (created if missing).
      enabled: False makes a writer that writes nothing (for non-zero jax processes).
      flush_secs: the background thread flushes at least this often.
    """
    self.logdir = logdir
    self.enabled = bool(enabled)
    self._writer = EventFileWriter(logdir, flush_secs=flush_secs) if self.enabled else None

  def _add(self, step, summary):
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
      raise ValueError(f"step must be an int, got {step!r}")
    if self._writer is None:
      raise ValueError(f"SummaryWriter({self.logdir!r}) is closed")
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))

  def scalars(self, step, values):
    """Logs {tag: number} at `step`. Numbers may be python, numpy or 0-d jax arrays."""
    if not self.enabled:
      return
    summary = summary_pb2.Summary()
    for tag, value in values.items():
      try:
        value = float(value)
      except (TypeError, ValueError):
        raise ValueError(f"scalar {tag!r} must be a number, got {value!r}") from None
      summary.value.add(tag=tag, simple_value=value)
    self._add(step, summary)

  def text(self, step, tag, text):
    """Logs a (markdown) string under `tag` at `step`."""
    if not self.enabled:
      return
    if not isinstance(text, str):
      raise ValueError(f"text {tag!r} must be a str, got {type(text).__name__}")
    self._add(step, text_summary.text_pb(tag, text))

  def flush(self):
    """Writes every queued event to disk."""
    if self._writer is not None:
      self._writer.flush()

  def close(self):
    """Flushes and closes the event file; further logging raises. Safe to call twice."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
