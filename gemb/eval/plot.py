"""Quality vs Matryoshka embedding dim: one line per task (R@1 for retrieval, accuracy for
classification), dashed random-init lines, dotted chance levels."""

import matplotlib

matplotlib.use("Agg")  # files only: no display needed (headless hosts, tests)
import matplotlib.pyplot as plt  # noqa: E402

from gemb.eval.report import headline_metric  # noqa: E402


def _curve(metrics, metric):
  dims = sorted(int(d) for d in metrics.get("by_dim", {}))
  return dims, [metrics["by_dim"][str(d)][metric] for d in dims]


def plot_by_dim(path, trained, random_init=None, *, title=None):
  """Writes a PNG of each task's headline metric vs dim from eval-JSON task dicts."""
  fig, ax = plt.subplots(figsize=(7.2, 4.8))
  for i, task in enumerate(sorted(trained)):
    color = f"C{i % 10}"
    metric = headline_metric(trained[task])
    dims, values = _curve(trained[task], metric)
    ax.plot(dims, values, "o-", color=color, label=f"{task} ({metric})")
    if random_init and task in random_init:
      dims_r, values_r = _curve(random_init[task], metric)
      ax.plot(dims_r, values_r, "x--", color=color, alpha=0.7, label=f"{task} (random init)")
    chance = trained[task].get(f"chance_{metric}")
    if chance is not None:
      ax.axhline(chance, color=color, linestyle=":", linewidth=1, alpha=0.7)
  ax.set_xscale("log", base=2)
  all_dims = sorted({int(d) for m in trained.values() for d in m.get("by_dim", {})})
  if all_dims:
    ax.set_xticks(all_dims, [str(d) for d in all_dims])
  ax.set_xlabel("embedding dim (Matryoshka prefix)")
  ax.set_ylabel("R@1 (retrieval) / accuracy (classification)")
  ax.set_ylim(bottom=0)
  ax.grid(True, alpha=0.3)
  ax.set_title(title or "quality vs embedding dim (dotted: chance)")
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
