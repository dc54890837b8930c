"""Pytree paths as gemb names parameters: 'image/proj/kernel', 'encoder/blocks/attn/qkv'.

One spelling for every place that matches or stores parameters by name: freeze regexes
(gemb/run/curriculum.py), init_from and pretrained towers (gemb/run/init_params.py), the
optimizer-state shardings (gemb/run/state.py) and the serving bundle's params.npz
(gemb/export/writer.py).
"""


def param_path(path):
  """A jax tree path (``tree_flatten_with_path``) -> 'image/proj/kernel', 'encoder/blocks/attn/qkv'."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)
