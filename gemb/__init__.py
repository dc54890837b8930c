"""gemb: natively multimodal embedding models in JAX/Flax NNX.

How the parts depend on each other (tests/test_import_graph.py checks it; an arrow reads
"may import"; lower layers never import higher ones):

  leaves    batch (the batch format, numpy), paths (local or gs:// paths), trees (parameter
            path names), parallel (meshes, sharding rules), distributed, pretrained (fetch and
            inspect pretrained checkpoint directories): no other gemb part.
  model     -> batch, parallel. The network and its pretrained towers; knows nothing of
            datasets, losses, runs or training.
  data      -> batch. Datasets, tasks, tokenizer, decoding, pipelines; knows nothing of the
            model.
  losses    -> model (Matryoshka prefixes), parallel.
  run       -> model, parallel, paths, trees. What a run is: curriculum, optimizer, train
            state, workdir layout, checkpoints, summaries, soups, init_from. Neither trains
            nor evaluates.
  eval      -> data, model, run (and the leaves). Metrics, retrieval, the eval CLI; never
            imports train.
  train     -> data, model, losses, run, eval (and the leaves). The step and the loop;
            the only part that writes a run.
  serving   -> batch, data (decoding and packing one input only). Runs a bundle with jax +
            numpy: no flax, optax, orbax, grain or TFDS, directly or through gemb.data.
  export    -> data, model, run, serving, batch, trees, pretrained. A run's checkpoint -> a
            bundle, or a sentence-transformers directory.
  integrations -> serving, data, run. Other frameworks' protocols over a bundle (MTEB).
  programs  main -> train; bench -> train, eval, run; embed and serve -> serving; cli (the
            console scripts) runs them by module name.
"""

__version__ = "0.1.0"
