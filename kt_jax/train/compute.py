"""How much compute a training run spent: images seen and FLOPs from XLA's cost analysis.

The report of task-oriented transfer compares pretraining methods at equal compute (the
paper's Figure 4), so each pretraining stage records `compute.json`: the FLOPs of one train
step (forward and backward of the student, the frozen teacher's forward) as XLA counts them
for the lowered step, times the steps run. Counted from shapes alone: nothing is compiled
or executed.
"""
import jax
import jax.numpy as jnp

COMPUTE_FILE = "compute.json"


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def step_flops(objective, batch_size: int, image_size: int) -> float:
  """XLA's FLOP count of one step's loss and gradients at this global batch (0 if the
  backend reports none)."""
  batch = {"image": jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)}
  params, model_state = jax.eval_shape(
      objective.init, jax.random.key(0),
      {"image": jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)})
  grad = jax.jit(jax.value_and_grad(objective.loss, has_aux=True))
  lowered = grad.lower(params, model_state, _abstract(objective.frozen()), batch,
                       jax.random.key(0))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def train_compute(config, objective, steps_per_epoch: int) -> dict:
  """{"steps", "images_seen", "flops_per_step", "flops"} of a run of `config`."""
  from kt_jax.train import trainer
  steps = trainer.resolve_schedule(config, steps_per_epoch).total_steps
  flops = step_flops(objective, config.batch_size, config.image_size)
  return {"steps": steps, "images_seen": steps * config.batch_size, "flops_per_step": flops,
          "flops": flops * steps}


def record(workdir: str, config, objective, steps_per_epoch: int) -> dict:
  """`train_compute` of a finished run, written to `<workdir>/compute.json` (process 0)."""
  import json
  from kt_jax import paths
  result = train_compute(config, objective, steps_per_epoch)
  if jax.process_index() == 0:
    paths.write_text(paths.join(workdir, COMPUTE_FILE), json.dumps(result, indent=2))
  return result
