"""The log window: merged train metrics equal the numpy means (last values) of its steps."""
import jax.numpy as jnp
import numpy as np

from gemb.train.metrics import TrainMetrics, Window


def _step_metrics(loss, accuracy, learning_rate):
  return TrainMetrics.single_from_model_output(
      loss=jnp.float32(loss), accuracy=jnp.float32(accuracy), grad_norm=jnp.float32(2 * loss),
      learning_rate=jnp.float32(learning_rate), temperature=jnp.float32(0.07),
      nonfinite_steps=jnp.int32(0), nonfinite_streak=jnp.int32(0))


def test_window_averages_the_steps_and_the_loss_of_each_task():
  losses, accuracies = [4.0, 3.0, 2.5, 1.0, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]
  tasks = ["a", "b", "a", "a", "b"]
  window = Window()
  for i, (loss, acc, task) in enumerate(zip(losses, accuracies, tasks)):
    window.add(_step_metrics(loss, acc, learning_rate=0.1 * (i + 1)), task)
  out = window.compute()
  np.testing.assert_allclose(out["loss"], np.mean(losses), rtol=1e-6)
  np.testing.assert_allclose(out["accuracy"], np.mean(accuracies), rtol=1e-6)
  np.testing.assert_allclose(out["grad_norm"], 2 * np.mean(losses), rtol=1e-6)
  np.testing.assert_allclose(out["learning_rate"], 0.5, rtol=1e-6)  # the last step's
  np.testing.assert_allclose(out["loss/a"], np.mean([4.0, 2.5, 1.0]), rtol=1e-6)
  np.testing.assert_allclose(out["loss/b"], np.mean([3.0, 0.5]), rtol=1e-6)

  # compute() starts a new window: the next one holds only its own steps.
  window.add(_step_metrics(7.0, 0.9, learning_rate=1.0), "b")
  out = window.compute()
  assert out["loss"] == 7.0 and out["loss/b"] == 7.0 and "loss/a" not in out
