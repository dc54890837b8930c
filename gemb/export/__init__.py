"""Export of a trained run to serving: bundle writer (writer.py), SavedModel (saved_model.py),
checkpoint soups (soup.py) and the CLI (python -m gemb.export)."""
