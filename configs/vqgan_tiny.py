"""A tiny VQGAN trained on the shipped natural images, on a CPU in minutes.

  python -m kt_jax.main --config=configs/vqgan_tiny.py --workdir=workdirs/vqgan_tiny

`vqgan_tiny` (32 px -> an 8x8 grid of a 256-code codebook, l2-normalised codes) and a
PatchGAN, trained as taming's VQLPIPSWithDiscriminator: L1 + perceptual distance on the
shipped EfficientNet-Lite0's features (NOT LPIPS: see kt_jax/objectives/perceptual.py) +
codebook and commitment losses, and the hinge GAN loss with the adaptive weight from
`loss.disc_start` on. Writes `reconstructions.png` (held-out inputs beside reconstructions),
`vqgan_curves.png` (L1, PSNR, codebook usage) and `model/`, which
`configs/latent_transformer_tiny.py` reads.
"""
from kt_jax import config_defaults


def get_config():
  c = config_defaults.vqgan_config()
  c.batch_size = 32
  c.total_steps = 600
  c.log_every_steps = 20
  c.eval_every_steps = 150
  c.checkpoint_every_steps = 300
  c.optimizer.lr = c.optimizer.min_lr = 1e-3
  c.discriminator.update(ndf=32, n_layers=2)
  c.loss.disc_start = 300
  c.data.pool_size = 1024
  c.data.pool_crop_size = 48
  return c
