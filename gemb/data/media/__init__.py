"""Decoders for raw media values: bytes or arrays -> fixed-shape float32 model inputs.

One file per modality (image.py, audio.py, video.py). Every loader raises ``MediaError``
with the reason when a value cannot be decoded or is out of bounds; the pipeline adds the
dataset, split and record key before reporting or skipping it.
"""


class MediaError(ValueError):
  """A raw media value that cannot become a model input (corrupt, empty, too long, ...)."""
