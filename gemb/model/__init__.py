"""gemb's model. Parameters carry logical axis names in their ``out_sharding`` metadata.

Flax would shard such variables eagerly at creation, reading the logical names as mesh
axes; gemb instead maps them through gemb.parallel's rules when it builds a sharded model,
so eager sharding is turned off (models can then also be built without any mesh).
"""

import flax

flax.config.update("flax_always_shard_variable", False)
