"""Serving a trained gemb model from its exported bundle (see gemb/serving/bundle.py).

Needs jax, numpy and the preprocessing libraries only: no flax, no gemb.model, no
training code. ``Embedder`` is the entry point; gemb.embed (batch files) and gemb.serve
(HTTP) build on it.
"""

from gemb.serving.embedder import Embedder, matryoshka  # noqa: F401
from gemb.serving.inputs import InputError  # noqa: F401
