"""Tokens/s of the latent transformer's sampler: key/value cache vs naive re-evaluation.

  nice -n 10 python benchmarks/latent_sampling.py                  # 16x16 grid, defaults
  python benchmarks/latent_sampling.py --width 512 --depth 8 --vocab 16384 --batch 16

Both samplers complete a 16x16 grid (256 positions) from scratch in one compiled loop; the
naive one re-runs the whole sequence for every position. Times exclude compilation (one warm
call first) and take the best of `--repeats`, in wall-clock seconds and in CPU seconds of this
process (all its threads; on a CPU shared with other jobs the CPU time is the steadier figure).
The script also checks that both return the same indices. Prints one JSON line with machine
and date.
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--grid", type=int, default=16)
  parser.add_argument("--vocab", type=int, default=1024)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import numpy as np
  from kt_jax.models import latent_transformer, sampling

  seq = args.grid * args.grid
  module = latent_transformer.LatentTransformer(vocab_size=args.vocab, seq_len=seq,
                                                width=args.width, depth=args.depth,
                                                num_heads=args.heads)
  params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, seq), jnp.int32))
  prefix = jnp.zeros((args.batch, seq), jnp.int32)
  key = jax.random.key(1)
  result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
                       f"{jax.devices()[0].device_kind}",
            "backend": jax.default_backend(), "grid": f"{args.grid}x{args.grid}",
            "batch": args.batch, "width": args.width, "depth": args.depth,
            "vocab": args.vocab}
  outputs = {}
  for name, cached in (("cached", True), ("naive", False)):
    run = lambda: sampling.sample(module, params, key, prefix, cached=cached)  # noqa: E731
    outputs[name] = np.asarray(run())  # compile
    best, best_cpu = float("inf"), float("inf")
    for _ in range(args.repeats):
      start, start_cpu = time.perf_counter(), time.process_time()
      run().block_until_ready()
      best = min(best, time.perf_counter() - start)
      best_cpu = min(best_cpu, time.process_time() - start_cpu)
    result[f"{name}_s"] = round(best, 4)
    result[f"{name}_tokens_per_s"] = round(args.batch * seq / best, 1)
    result[f"{name}_cpu_s"] = round(best_cpu, 4)
    result[f"{name}_tokens_per_cpu_s"] = round(args.batch * seq / best_cpu, 1)
  result["speedup"] = round(result["naive_s"] / result["cached_s"], 2)
  result["speedup_cpu"] = round(result["naive_cpu_s"] / result["cached_cpu_s"], 2)
  result["identical"] = bool((outputs["cached"] == outputs["naive"]).all())
  print(json.dumps(result))


if __name__ == "__main__":
  main()
