"""The bundle's entry points as a TensorFlow SavedModel (TF Serving, Vertex AI), via jax2tf.

Built from the bundle itself (its params and StableHLO artifacts), so the SavedModel runs
exactly the exported computation. One signature per entry point, named like it; inputs
are the side arrays of the manifest (batch dim None), the output "embedding" is the raw
[batch, D] embedding: a client L2-normalizes its first d values for output size d.
Params are SavedModel variables, not constants folded into the graph.
Needs the ``serving`` extra (tensorflow-cpu).
"""

import os

import jax

from gemb.serving import bundle


def write_saved_model(directory, entry_points):
  """Writes ``directory``/saved_model; returns its manifest entry."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  _, arrays = bundle.load_params(directory)
  module = tf.Module()
  module.params = [tf.Variable(a, trainable=False, name=f"p{i}") for i, a in enumerate(arrays)]
  signatures = {}
  for name, entry in entry_points.items():
    with open(os.path.join(directory, entry["file"]), "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    keys = sorted(entry["inputs"])
    specs = {k: entry["inputs"][k] for k in keys}
    polymorphic = {k: "(" + ", ".join(["b"] + ["_"] * (len(s["shape"]) - 1)) + ")"
                   for k, s in specs.items()}
    tf_fn = jax2tf.convert(exported.call, polymorphic_shapes=[None, polymorphic],
                           with_gradient=False,
                           native_serialization_platforms=exported.platforms)
    input_signature = [tf.TensorSpec([None] + [int(d) for d in s["shape"][1:]], s["dtype"],
                                     name=k) for k, s in specs.items()]

    signatures[name] = tf.function(_signature(tf_fn, module.params, keys),
                                   input_signature=input_signature, autograph=False)
    setattr(module, name, signatures[name])
  tf.saved_model.save(module, os.path.join(directory, bundle.SAVED_MODEL_DIR),
                      signatures=signatures)
  return {"dir": bundle.SAVED_MODEL_DIR, "signatures": sorted(signatures),
          "output": "embedding", "tensorflow": tf.__version__}


def _signature(tf_fn, params, keys):
  """serve(*side tensors in ``keys`` order) -> {"embedding": raw [batch, D]}."""
  def serve(*tensors):
    return {"embedding": tf_fn(params, dict(zip(keys, tensors)))}
  return serve
