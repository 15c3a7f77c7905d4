"""Benchmark the exact step a config runs: `python -m kt_jax.bench --config=configs/<file>.py`.

Builds the train step (or, for `frozen_eval`, the teacher's inference step) the way the stage
would, feeds it synthetic batches of the right shapes, and reports median/spread step time,
images/s, FLOPs per image from XLA's cost analysis (and an analytic count for ViTs), the
utilisation of a matmul peak measured on the same device in the compute dtype, peak memory
and compile time. Writes `bench.json` into --workdir and prints one table line.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from kt_jax.models.vit import VisionTransformer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config to benchmark.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/kt_jax_bench", "Where bench.json goes.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")


def matmul_peak(dtype, seconds: float = 2.0) -> float:
  """FLOP/s of a large square matmul in `dtype` on the default device, measured now."""
  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jnp.asarray(np.random.RandomState(0).randn(n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  runs, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds or runs < 3:
    f(a, a).block_until_ready()
    runs += 1
  return 2 * n ** 3 * runs / (time.perf_counter() - start)


def vit_forward_flops(m: VisionTransformer, image_hw: tuple[int, int]) -> float:
  """Analytic FLOPs (multiply-add = 2) of one image through a ViT forward pass."""
  n = (image_hw[0] // m.patch_size) * (image_hw[1] // m.patch_size)
  t, d = 1 + m.num_register_tokens + n, m.embed_dim
  hidden = int(d * m.mlp_ratio)
  if m.ffn == "swiglu":
    hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
    mlp = 2 * t * (d * 2 * hidden + hidden * d)
  else:
    mlp = 2 * t * 2 * d * hidden
  attention = 2 * t * 4 * d * d + 2 * 2 * t * t * d
  patch_embed = 2 * n * m.patch_size ** 2 * 3 * d
  return patch_embed + m.depth * (attention + mlp)


def _time_steps(run_once, steps: int, warmup: int) -> np.ndarray:
  for _ in range(warmup):
    run_once()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run_once()
    times.append(time.perf_counter() - start)
  return np.asarray(times)


def _memory(compiled) -> dict:
  out = {}
  try:
    analysis = compiled.memory_analysis()
    out["compiled_bytes"] = int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
                                + analysis.output_size_in_bytes)
  except Exception:  # not every backend reports it
    pass
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return out


def bench_proteus(config, steps: int, warmup: int) -> dict:
  from kt_jax.objectives import proteus_stage
  from kt_jax.train import trainer
  objective = proteus_stage.build_objective(config)
  s, b = config.image_size, config.batch_size
  batch = {"image": np.random.RandomState(0).randn(b, s, s, 3).astype(np.float32)}
  setup = trainer.build(config, objective, {"image": batch["image"][:1]},
                        trainer.Schedule(total_steps=10_000, warmup_steps=100))
  state = setup.init(jax.random.key(config.seed))
  global_batch = jax.device_put(batch, setup.batch_sharding)
  start = time.perf_counter()
  compiled = setup.step_fn.lower(state, global_batch, setup.frozen).compile()
  compile_s = time.perf_counter() - start
  holder = {"state": state}

  def run_once():
    holder["state"], m = compiled(holder["state"], global_batch, setup.frozen)
    jax.block_until_ready(m["loss"])

  times = _time_steps(run_once, steps, warmup)
  analytic = None  # counted only when every model is a ViT (CNN teachers: XLA's count only)
  student = objective.student
  if isinstance(student, VisionTransformer) and isinstance(objective.teacher, VisionTransformer):
    # The student runs forward on both views (2B) and backward (~2x forward).
    analytic = 3 * 2 * b * vit_forward_flops(student, (s, s))
    analytic += b * vit_forward_flops(objective.teacher, (s, s))
    n = objective.num_patches
    d_s, d_t = student.embed_dim, objective.teacher_dim
    analytic += 3 * 2 * b * (1 + 2 * n) * d_s * d_t  # three heads, forward + backward
  return dict(kind="train_step", compiled=compiled, times=times, compile_s=compile_s,
              batch=b, analytic_flops=analytic)


def bench_inference(config, steps: int, warmup: int) -> dict:
  from kt_jax import convert
  from kt_jax.eval import features
  module, variables = convert.load_pretrained(config.teacher)
  spec = convert.input_spec(config.teacher, config.get("image_size", 0))
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  if hasattr(module, "dtype"):
    module = module.clone(dtype=dtype)
  b = config.batch_size
  images = np.random.RandomState(0).randint(0, 255, (b, spec.image_size, spec.image_size, 3),
                                            np.uint8)
  fn = jax.jit(features.make_feature_fn(module, spec, ("x_norm_clstoken",)))
  start = time.perf_counter()
  compiled = fn.lower(variables, images).compile()
  compile_s = time.perf_counter() - start
  times = _time_steps(lambda: jax.block_until_ready(compiled(variables, images)),
                      steps, warmup)
  analytic = (b * vit_forward_flops(module, (spec.image_size,) * 2)
              if isinstance(module, VisionTransformer) else None)
  return dict(kind="inference", compiled=compiled, times=times, compile_s=compile_s, batch=b,
              analytic_flops=analytic)


def run(config, workdir: str, steps: int = 10, warmup: int = 2) -> dict:
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  bench = bench_inference if config.stage == "frozen_eval" else bench_proteus
  result = bench(config, steps, warmup)
  times, b = result.pop("times"), result["batch"]
  compiled = result.pop("compiled")
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
  peak = matmul_peak(dtype)
  median = float(np.median(times))
  report = dict(
      config_stage=config.stage, device=jax.devices()[0].device_kind,
      backend=jax.default_backend(), devices=jax.device_count(), dtype=dtype.name,
      batch=b, step_s_median=median, step_s_p10=float(np.percentile(times, 10)),
      step_s_p90=float(np.percentile(times, 90)), images_per_s=b / median,
      xla_flops_per_image=xla_flops / b,
      analytic_flops_per_image=(result["analytic_flops"] / b if result["analytic_flops"]
                                else None),
      matmul_peak_flops=peak, utilisation=(xla_flops / median) / peak if xla_flops else None,
      compile_s=result["compile_s"], kind=result["kind"], **_memory(compiled),
      jax_version=jax.__version__, date=time.strftime("%Y-%m-%d"))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "bench.json"), "w") as f:
    json.dump(report, f, indent=2)
  util = f"{100 * report['utilisation']:.0f}%" if report["utilisation"] else "-"
  print(f"{report['kind']:<11} {report['device']:<12} {dtype.name:<9} batch {b:<5} "
        f"{median * 1e3:9.1f} ms/step  {report['images_per_s']:8.1f} img/s  "
        f"{report['xla_flops_per_image'] / 1e9:7.2f} GFLOP/img  util {util}  "
        f"compile {report['compile_s']:.1f} s")
  return report


def main(argv):
  del argv
  run(_CONFIG.value, _WORKDIR.value, _STEPS.value, _WARMUP.value)


if __name__ == "__main__":
  app.run(main)
