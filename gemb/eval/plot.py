"""Quality vs Matryoshka embedding dim: one line per task (R@1 for retrieval, accuracy for
classification) as a multiple of the task's chance level, dashed lines for a baseline (the
run's start).

Tasks differ in chance by 100x (9 emoji groups vs 7000 WordNet words), so raw values would
flatten every retrieval line against zero; "x chance" on a log axis puts them side by side.
"""

import matplotlib

matplotlib.use("Agg")  # files only: no display needed (headless hosts, tests)
import matplotlib.pyplot as plt  # noqa: E402

from gemb.eval.report import headline_metric  # noqa: E402


def _curve(metrics, metric, chance):
  dims = sorted(int(d) for d in metrics.get("by_dim", {}))
  # A zero (no hit) would vanish from a log axis: draw it at a tenth of chance.
  return dims, [max(metrics["by_dim"][str(d)][metric] / chance, 0.1) for d in dims]


def plot_by_dim(path, trained, baseline=None, *, title=None):
  """Writes a PNG of each task's headline metric vs dim from eval-JSON task dicts."""
  fig, ax = plt.subplots(figsize=(10, 5.6))
  for i, task in enumerate(sorted(trained)):
    color, marker = f"C{i % 10}", "os^D"[i // 10 % 4]
    metric = headline_metric(trained[task])
    chance = trained[task][f"chance_{metric}"]
    dims, values = _curve(trained[task], metric, chance)
    ax.plot(dims, values, marker + "-", color=color, label=f"{task} ({metric})")
    if baseline and task in baseline:
      dims_r, values_r = _curve(baseline[task], metric, chance)
      ax.plot(dims_r, values_r, "x--", color=color, alpha=0.5)
  ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  all_dims = sorted({int(d) for m in trained.values() for d in m.get("by_dim", {})})
  if all_dims:
    ax.set_xticks(all_dims, [str(d) for d in all_dims])
  ax.set_xlabel("embedding dim (Matryoshka prefix)")
  ax.set_ylabel("R@1 (retrieval) / accuracy (classification), x chance")
  ax.grid(True, which="both", alpha=0.3)
  ax.set_title(title or "quality vs embedding dim (dashed: baseline, dotted: chance)")
  ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
