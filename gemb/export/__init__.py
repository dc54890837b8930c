"""Export of a trained run to serving: bundle writer (writer.py), SavedModel (saved_model.py),
and the CLI (python -m gemb.export); soups come from gemb.run.soup."""
