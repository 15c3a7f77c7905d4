"""A tiny latent transformer over the codes of a tiny VQGAN, both trained here, on a CPU in
minutes (a pipeline: `configs/vqgan_tiny.py`'s VQGAN first, then the transformer).

  python -m kt_jax.main --config=configs/latent_transformer_tiny.py \
      --workdir=workdirs/latent_transformer_tiny

`<workdir>/vqgan/` is the `vqgan` stage exactly as configs/vqgan_tiny.py runs it (skipped on
a rerun once finished). `<workdir>/latent_transformer/` encodes the shipped natural images
(and their mirror images) once with that frozen VQGAN into 8x8 grids of indices (cached in
`codes/`), then trains `latent_transformer_tiny` (4 blocks, width 128) on next-index
cross-entropy, writing `samples.png` (unconditional samples decoded by the VQGAN) and
`latent_curves.png` at every evaluation. Override a stage's key through its name:
`--config.stages.latent_transformer.total_steps=1000`.
"""
import importlib.util
import os

import ml_collections

from kt_jax import config_defaults


def _vqgan_tiny():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vqgan_tiny.py")
  spec = importlib.util.spec_from_file_location("vqgan_tiny", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  c = config_defaults.latent_transformer_config()
  c.vqgan_path = "{stage:vqgan}"
  c.batch_size = 64
  c.total_steps = 600
  c.log_every_steps = 20
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 300
  c.data.pool_size = 1024
  c.data.pool_crop_size = 48
  pipeline = ml_collections.ConfigDict()
  pipeline.stage = "pipeline"
  pipeline.order = ("vqgan", "latent_transformer")
  pipeline.stages = ml_collections.ConfigDict({"vqgan": _vqgan_tiny(), "latent_transformer": c})
  return pipeline
