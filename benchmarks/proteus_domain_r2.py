"""Held-out R^2 per proxy domain (grey digits vs natural crops) of a finished proteus run:
the figures of README "Where the R^2 comes from: per domain".

  python benchmarks/proteus_domain_r2.py WORKDIR [STEP ...]
"""
import json, sys
import jax, numpy as np, ml_collections
from kt_jax.data import builder
from kt_jax.stages import proteus as proteus_stage
from kt_jax.train import checkpoint, trainer

workdir = sys.argv[1]
config = ml_collections.ConfigDict(json.load(open(f"{workdir}/config.json")))
objective = proteus_stage.build_objective(config)
stream, spe = builder.build_train_stream(config)
images = builder.holdout_images(config, stream.holdout)
pixels = images * np.array(config.data.std) + np.array(config.data.mean)  # back to [0, 1]
grey = np.array([np.ptp(im, axis=-1).max() < 1e-3 for im in pixels])
print("held-out digits", grey.sum(), "of", len(grey))
sample = {"image": images[:1]}
setup = trainer.build(config, objective, sample, trainer.resolve_schedule(config, spe))
ckpt = checkpoint.Checkpointer(workdir, keep=3, async_save=False)
frozen = objective.frozen()
steps = sorted(int(s) for s in sys.argv[2:]) or [ckpt.latest_step()]
for step in steps:
  state, _ = ckpt.restore(step, checkpoint.abstract_like(setup.abstract_state, setup.state_shardings))
  out = {}
  for name, mask in (("digits", grey), ("photos", ~grey), ("all", np.ones_like(grey))):
    r = objective.held_out_r2(state.params, frozen, images[mask])
    out[name] = {k: round(float(v), 3) for k, v in r.items()} | {"n": int(mask.sum())}
  print(step, json.dumps(out))
ckpt.close()
