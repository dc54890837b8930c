"""gemb: natively multimodal embedding models in JAX/Flax NNX."""

__version__ = "0.1.0"
