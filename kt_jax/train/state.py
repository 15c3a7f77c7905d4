"""The train state: everything a resumed run needs besides the data iterator's position."""
from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar
  params: Any              # {model_name: params}
  model_state: Any         # mutable collections (e.g. batch_stats), {} for ViTs
  opt_state: Any          # the optimizer's state; {group: state} with update groups
  ema_params: Any          # same tree as params, or None
  rng: jax.Array           # raw uint32 key data (orbax saves plain arrays)

  def key(self) -> jax.Array:
    """A fresh key per step, derived from the step: resumed runs draw the same numbers."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
