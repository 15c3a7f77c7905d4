"""DIGG (Downstream Image-Guided Generation, "One to Transfer All") on 10-shot MNIST, with
Table 5's baselines, in one pipeline:

  python -m kt_jax.main --config=configs/digg_tiny.py --workdir=workdirs/digg_tiny
  python -m kt_jax.main --config=configs/digg_tiny.py:tiny --workdir=/tmp/digg  # seconds

`vqgan` and `latent_transformer` are configs/latent_transformer_tiny.py's two stages (a 32 px
VQGAN with an 8x8 grid of 256 codes and a 4-block GPT over it, trained on the shipped natural
images only, as the paper trains them upstream). `digg` / `digg_small` mask the bottom half
of each of the 80 few-shot train digits' code grids and complete it 16 / 4 times
(`<workdir>/digg/contact_sheet.png`: original, reconstruction, visible half, samples). The
student (MobileNetV2 at 64 px, from scratch) learns the ImageNet EfficientNet-Lite2's pooled
last feature by L2 on each transfer set (DIGG x16, DIGG x4, the 80 raw digits, as many
upstream natural crops as DIGG x16), then is finetuned on the 10-shot labels beside the
ImageNet-pretrained student; every finetune appends a row to `<workdir>/report.md`.
A finetuned or IRF teacher: `--config.stages.kd_digg.teacher.path=<finetune workdir>/model`
(and the other kd_* stages). kt_jax/digg_recipe.py builds the stages.
"""
import importlib.util
import os

from kt_jax import digg_recipe


def _upstream():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "latent_transformer_tiny.py")
  spec = importlib.util.spec_from_file_location("latent_transformer_tiny", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  pipeline = module.get_config()
  return pipeline.stages.vqgan, pipeline.stages.latent_transformer


def get_config(arg: str = ""):
  tiny = arg == "tiny"
  upstream = digg_recipe.tiny_upstream(digg_recipe.sizes(True)) if tiny else _upstream()
  return digg_recipe.chain(upstream, tiny=tiny)
