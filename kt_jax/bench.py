"""Benchmark the exact step a config runs: `python -m kt_jax.bench --config=configs/<file>.py`.

Builds the train step (or, for `frozen_eval`, the teacher's inference step) the way the stage
would, feeds it synthetic batches of the right shapes, and reports median/spread step time,
images/s, FLOPs per image from XLA's cost analysis (and an analytic count for ViTs), the
utilisation of a matmul peak measured on the same device in the compute dtype, peak memory
and compile time. Writes `bench.json` into --workdir and prints one table line.

`--input_workers=0,2` also times the config's input pipeline (its data.source and path, its
augmentations) per grain worker count, next to the step's images/s: whichever is lower
bounds the run.

What is timed comes from the config's stage module, found through the stage registry: a
training stage exposes `build_objective(config)` (its train step is timed), an evaluation
stage `load_model(config)` (its model's forward pass is timed).
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from kt_jax import cli, config_defaults
from kt_jax.errors import UserError
from kt_jax.models.vit import VisionTransformer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config to benchmark.",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/kt_jax_bench", "Where bench.json goes.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_INPUT_WORKERS = flags.DEFINE_list(
    "input_workers", [], "Also time the config's input pipeline (decoded, augmented batches "
    "from config.data) at each of these grain worker counts, e.g. 0,2,4.")
_INPUT_BATCHES = flags.DEFINE_integer("input_batches", 10, "Timed batches per worker count.")


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


def task_distill_bench_config() -> ml_collections.ConfigDict:
  """A `distill_task` step to time, with a random teacher classifier (`random:<model>` and
  `teacher.num_classes`) instead of a finetuned one."""
  c = config_defaults.distill_task_config()
  c.teacher.num_classes = 10
  c.student.name = "resnet18"
  return c


def stage_module(stage: str):
  """The module behind a stage name in the stage registry."""
  from kt_jax import stages
  try:
    fn = stages.resolve(stage)
  except ValueError as e:
    raise UserError(str(e)) from None
  return sys.modules[fn.__module__]


def check(config, input_workers=()) -> None:
  """What a benchmark reads: the teacher, the student, and the data only if it is timed."""
  from kt_jax.stages import checks
  if "teacher" in config:
    checks.check_teacher_path(config.teacher.path, "teacher.path")
  if "student" in config:
    checks.check_model(config.student.name, config.student.overrides, "student")
  if input_workers:
    from kt_jax.data import builder
    builder.validate(config)


def _analytic_train_flops(objective, b: int, s: int) -> float | None:
  """Forward FLOPs x3 for what trains (forward + ~2x backward), x1 for the frozen teacher;
  None unless every network is a ViT (for CNNs XLA's count is the only one) or the objective
  has no student/teacher pair (the VQGAN's)."""
  if not (hasattr(objective, "student") and hasattr(objective, "teacher")):
    return None
  student = getattr(objective.student, "backbone", objective.student)
  teacher = getattr(objective.teacher, "backbone", objective.teacher)
  if not (isinstance(student, VisionTransformer) and isinstance(teacher, VisionTransformer)):
    return None
  from kt_jax.objectives.proteus import Proteus
  if isinstance(objective, Proteus):  # the student runs both views (2B)
    flops = 3 * 2 * b * vit_forward_flops(student, (s, s)) + b * vit_forward_flops(teacher, (s, s))
    d_s, d_t = student.embed_dim, objective.teacher_dim
    return flops + 3 * 2 * b * (1 + 2 * objective.num_patches) * d_s * d_t  # three heads
  n = objective.student.num_classes
  return (3 * b * (vit_forward_flops(student, (s, s)) + 2 * student.embed_dim * n)
          + b * (vit_forward_flops(teacher, (s, s)) + 2 * teacher.embed_dim * n))


def bench_train(config, steps: int, warmup: int) -> dict:
  from kt_jax.train import trainer
  objective = stage_module(config.stage).build_objective(config)
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
  return dict(kind="train_step", compiled=compiled, times=times, compile_s=compile_s,
              batch=b, analytic_flops=_analytic_train_flops(objective, b, s))


def bench_inference(config, steps: int, warmup: int) -> dict:
  from kt_jax.eval import features
  module, variables, spec = stage_module(config.stage).load_model(config)
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  if hasattr(module, "dtype"):
    module = module.clone(dtype=dtype)
  b = config.eval.batch_size  # an evaluation stage extracts features in these batches
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


def bench_input(config, workers: list[int], batches: int = 10, warmup: int = 2) -> list[dict]:
  """Images/s of the config's own train stream (read, decode, augment, batch) per worker
  count. Warm-up batches absorb the workers' start-up; the clock runs over `batches` more."""
  from kt_jax.data import builder
  rows = []
  for w in workers:
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.data.workers = int(w)
    stream, _ = builder.build_train_stream(cfg)
    for _ in range(warmup):
      next(stream)
    start = time.perf_counter()
    images = sum(len(next(stream)["image"]) for _ in range(batches))
    seconds = time.perf_counter() - start
    rows.append(dict(source=cfg.data.source, path=cfg.data.get("path", ""), workers=int(w),
                     batch=cfg.batch_size, images=images, seconds=seconds,
                     images_per_s=images / seconds, bad_records=stream.bad_records()))
    del stream  # stops its worker processes before the next count starts its own
  return rows


def run(config, workdir: str, steps: int = 10, warmup: int = 2,
        input_workers: tuple[int, ...] = (), input_batches: int = 10) -> dict:
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  stage = stage_module(config.stage)
  if hasattr(stage, "build_objective"):
    bench, training = bench_train, True
  elif hasattr(stage, "load_model"):
    bench, training = bench_inference, False
  else:
    raise UserError(f"Stage {config.stage!r} has no step to benchmark (a training stage or "
                    "frozen_eval can be benchmarked).")
  check(config, input_workers)
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
  if input_workers and training:
    report["input_pipeline"] = bench_input(config, list(input_workers), input_batches)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "bench.json"), "w") as f:
    json.dump(report, f, indent=2)
  util = f"{100 * report['utilisation']:.0f}%" if report["utilisation"] else "-"
  print(f"{report['kind']:<11} {report['device']:<12} {dtype.name:<9} batch {b:<5} "
        f"{median * 1e3:9.1f} ms/step  {report['images_per_s']:8.1f} img/s  "
        f"{report['xla_flops_per_image'] / 1e9:7.2f} GFLOP/img  util {util}  "
        f"compile {report['compile_s']:.1f} s")
  for row in report.get("input_pipeline", []):
    bound = "data-bound" if row["images_per_s"] < report["images_per_s"] else "compute-bound"
    print(f"input       {row['source']:<12} workers {row['workers']:<3} "
          f"{row['images_per_s']:8.1f} img/s decoded+augmented   model {report['images_per_s']:.1f} "
          f"img/s: {bound}")
  return report


def main(argv):
  del argv  # cli.parse_flags has rejected stray arguments
  try:
    workers = tuple(int(w) for w in _INPUT_WORKERS.value)
  except ValueError:
    raise UserError(f"--input_workers takes worker counts, e.g. 0,2,4; got "
                    f"{','.join(_INPUT_WORKERS.value)}") from None
  run(_CONFIG.value, _WORKDIR.value, _STEPS.value, _WARMUP.value, workers, _INPUT_BATCHES.value)


if __name__ == "__main__":
  cli.run(main, prog="kt_jax.bench")
