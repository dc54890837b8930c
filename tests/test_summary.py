"""The TF-free TensorBoard writer: what it writes reads back through TensorBoard's own reader."""
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from gemb.run import summary


def read(logdir):
  acc = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def test_scalars_and_text_read_back(tmp_path):
  logdir = tmp_path / "tensorboard"
  with summary.SummaryWriter(str(logdir)) as writer:
    writer.scalars(0, {"train/loss": 2.5, "train/lr": np.float32(1e-3)})
    writer.scalars(10, {"train/loss": jnp.asarray(1.25)})
    writer.scalars(20, {"train/loss": np.float64(0.625), "eval/R@1": 0.5})
    writer.text(0, "config", "# config\n`lr: 0.001`")
    writer.text(20, "config", "second")
  acc = read(logdir)
  assert sorted(acc.Tags()["scalars"]) == ["eval/R@1", "train/loss", "train/lr"]
  loss = acc.Scalars("train/loss")
  assert [e.step for e in loss] == [0, 10, 20]
  assert [e.value for e in loss] == [2.5, 1.25, 0.625]
  assert acc.Scalars("train/lr")[0].value == pytest.approx(1e-3, rel=1e-7)
  assert [(e.step, e.value) for e in acc.Scalars("eval/R@1")] == [(20, 0.5)]
  text = acc.Tensors("config")
  assert [e.step for e in text] == [0, 20]
  assert [e.tensor_proto.string_val[0].decode() for e in text] == [
      "# config\n`lr: 0.001`", "second"]
  assert acc.SummaryMetadata("config").plugin_data.plugin_name == "text"


def test_flush_makes_events_visible_before_close(tmp_path):
  writer = summary.SummaryWriter(str(tmp_path), flush_secs=3600)
  writer.scalars(3, {"x": 1.0})
  writer.flush()
  assert [(e.step, e.value) for e in read(tmp_path).Scalars("x")] == [(3, 1.0)]
  writer.close()
  writer.close()  # Idempotent.
  with pytest.raises(ValueError, match="is closed"):
    writer.scalars(4, {"x": 2.0})


def test_disabled_writer_writes_nothing(tmp_path):
  logdir = tmp_path / "tb"
  writer = summary.SummaryWriter(str(logdir), enabled=False)
  writer.scalars(1, {"x": 1.0})
  writer.text(1, "t", "hello")
  writer.flush()
  writer.close()
  assert not logdir.exists()


def test_bad_values(tmp_path):
  with summary.SummaryWriter(str(tmp_path)) as writer:
    with pytest.raises(ValueError, match="scalar 'loss' must be a number, got 'nan-ish'"):
      writer.scalars(1, {"loss": "nan-ish"})
    with pytest.raises(ValueError, match="step must be an int, got 1.5"):
      writer.scalars(1.5, {"loss": 1.0})
    with pytest.raises(ValueError, match="text 't' must be a str"):
      writer.text(1, "t", b"bytes")


def test_does_not_import_tensorflow_even_if_installed(tmp_path):
  # A fake `tensorflow` that fails on import stands in for an installed TF.
  fake = tmp_path / "site" / "tensorflow"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("raise RuntimeError('tensorflow was imported')\n")
  script = textwrap.dedent(f"""
      from gemb.run import summary
      with summary.SummaryWriter({str(tmp_path / 'tb')!r}) as w:
        w.scalars(1, {{"x": 1.0}})
        w.text(1, "t", "hi")
      import sys
      assert "tensorflow" not in sys.modules
  """)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), repo]))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert os.listdir(tmp_path / "tb")
