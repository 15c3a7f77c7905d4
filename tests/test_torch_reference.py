"""benchmarks/torch_reference.py: the PyTorch baseline runs, and computes what Proteus computes.

Tiny models (depth 2, 56-112 px, batch 2-4) keep the whole file to a few seconds. The loss
terms are recomputed in NumPy from separately computed tokens, so a slip in the reference step
(wrong view, wrong head, wrong mask order) cannot cancel out against itself.
"""
import importlib.util
import json
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "torch_reference.py"
_SPEC = importlib.util.spec_from_file_location("torch_reference", _PATH)
tr = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tr)

TINY = ["--depth", "2", "--teacher-depth", "2", "--steps", "2", "--warmup", "1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
  """One intra-op thread: on a shared 2-core machine OpenMP's spinning threads can make a
  tiny step 30x slower; restored afterwards for the other test files."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def run_cli(tmp_path, *args) -> dict:
  out = tmp_path / "report.json"
  tr.main(list(args) + ["--json", str(out)])
  return json.loads(out.read_text())


def check_report(report: dict, step: str, batch: int):
  assert report["step"] == step and report["batch"] == batch
  assert report["step_s_median"] > 0 and report["step_s_p10"] > 0
  assert report["step_s_p10"] <= report["step_s_median"] <= report["step_s_p90"]
  assert report["images_per_s"] == pytest.approx(batch / report["step_s_median"])
  assert report["threads"] == torch.get_num_threads()
  assert report["torch_version"] == torch.__version__
  assert report["analytic_flops_per_image"] > 0


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_cli_proteus(tmp_path, attention):
  report = run_cli(tmp_path, "--step", "proteus", "--student", "vit_tiny", "--teacher",
                   "vit_small", "--image-size", "56", "--batch", "4", "--attention", attention,
                   *TINY)
  check_report(report, "proteus", 4)
  assert report["attention"] == attention and report["compile"] == "none"


def test_cli_proteus_with_the_tiny_configs_cnn_teacher(tmp_path):
  """configs/proteus_tiny.py's shapes: EfficientNet-Lite0 tokens teaching a ViT/32."""
  report = run_cli(tmp_path, "--step", "proteus", "--student", "vit_tiny", "--teacher",
                   "efficientnet_lite0", "--patch", "32", "--image-size", "64", "--batch", "2",
                   *TINY)
  check_report(report, "proteus", 2)
  assert report["teacher"] == "efficientnet_lite0"
  t = tr.EfficientNetTokens(64).eval()
  with torch.no_grad():
    out = t.forward_features(torch.zeros(1, 3, 64, 64))
  assert out["x_norm_patchtokens"].shape == (1, 4, 1280)  # a 2x2 grid, as the ViT/32's


@pytest.mark.parametrize("model", tr.INFERENCE_MODELS)
def test_cli_inference(tmp_path, model):
  report = run_cli(tmp_path, "--step", "inference", "--model", model, "--image-size", "56",
                   "--batch", "2", *TINY)
  check_report(report, "inference", 2)
  assert report["model"] == model


@pytest.mark.parametrize("student,size", [("resnet18", 56), ("vit_tiny", 112)])
def test_cli_task_distill(tmp_path, student, size):
  report = run_cli(tmp_path, "--step", "task_distill", "--student", student, "--image-size",
                   str(size), "--batch", "2", *TINY)
  check_report(report, "task_distill", 2)


def test_compile_failure_is_reported_not_raised(monkeypatch):
  def broken(fn, **kwargs):
    def call(*args, **kw):
      raise RuntimeError("no C compiler")
    return call
  monkeypatch.setattr(tr.torch, "compile", broken)
  report = tr.run("inference", steps=1, warmup=1, compile_mode="default",
                  model="dinov2_vitb14", image_size=28, batch=2, depth=1)
  assert "no C compiler" in report["compile_error"] and report["step_s_median"] is None


def test_masks_follow_the_official_collate():
  masks, indices = tr.proteus_masks(4, 16, np.random.RandomState(0))
  assert masks.dtype == torch.bool and masks.shape == (4, 16)
  assert masks.sum(1).tolist() == [8, 8, 0, 0]
  np.testing.assert_array_equal(indices.numpy(), np.flatnonzero(masks.numpy()))


@pytest.fixture(scope="module")
def proteus_parts():
  torch.manual_seed(0)
  student = tr.build_vit("vit_tiny", 14, 56, depth=2).train()
  teacher = tr.frozen(tr.build_vit("vit_small", 14, tr.HUB_IMG_SIZE, depth=2))
  heads = nn.ModuleDict({k: tr.projection_head(192, 384)
                         for k in ("token_head", "fea_head", "patch_head")})
  for p in heads.parameters():  # non-trivial LayerNorm affine too
    nn.init.normal_(p, std=0.5)
  images = torch.randn(4, 3, 56, 56)
  masks, indices = tr.proteus_masks(4, 16, np.random.RandomState(1))
  return student, teacher, heads, images, masks, indices


def np_head(head: nn.Sequential, x: np.ndarray) -> np.ndarray:
  norm, linear = head
  w = lambda t: t.detach().double().numpy()
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + norm.eps)
  return (x * w(norm.weight) + w(norm.bias)) @ w(linear.weight).T + w(linear.bias)


def test_proteus_losses_equal_numpy_recomputation(proteus_parts):
  student, teacher, heads, images, masks, indices = proteus_parts
  with torch.no_grad():
    losses = tr.proteus_losses(student, teacher, heads, images, masks, indices)
    # Independent tokens: one plain call per view, as the official nested call defines them.
    plain = student.forward_features(images)
    masked = student.forward_features(images, masks=masks)
    t = teacher.forward_features(images)
  n = lambda x: x.double().numpy()
  m = masks.numpy()
  t_cls, t_patch = n(t["x_norm_clstoken"]), n(t["x_norm_patchtokens"])
  s_cls = np_head(heads["token_head"], n(plain["x_norm_clstoken"]))
  s_fea = np_head(heads["fea_head"], n(plain["x_norm_patchtokens"]))
  s_patch = np_head(heads["patch_head"], n(masked["x_norm_patchtokens"])[m])
  expected = {
      "token_loss": np.mean((s_cls - t_cls) ** 2),
      "fea_loss": np.mean((np.concatenate([s_cls[:, None], s_fea], 1)
                           - np.concatenate([t_cls[:, None], t_patch], 1)) ** 2),
      "patch_loss": np.mean((s_patch - t_patch[m]) ** 2),
  }
  expected["loss"] = sum(expected.values())
  for k, v in expected.items():
    assert losses[k].item() == pytest.approx(v, rel=1e-4), k
  assert min(expected.values()) > 1e-3  # the comparison is not between zeros


def test_masked_view_gets_the_mask(proteus_parts):
  student, _, _, images, masks, _ = proteus_parts
  with torch.no_grad():
    masked, plain = tr.student_views(student, images, masks)
    separate = student.forward_features(images, masks=masks)
  diff = (masked["x_prenorm"] - plain["x_prenorm"]).abs().amax((1, 2))
  has_mask = masks.any(1)
  assert has_mask.tolist() == [True, True, False, False]
  assert (diff[has_mask] > 1e-2).all() and (diff[~has_mask] < 1e-5).all()
  torch.testing.assert_close(masked["x_prenorm"], separate["x_prenorm"], rtol=1e-5, atol=1e-5)


def test_proteus_step_trains_student_and_heads_only(proteus_parts):
  student, teacher, heads, images, masks, indices = proteus_parts
  snapshot = lambda m: [p.detach().clone() for p in m.parameters()]
  before = [snapshot(m) for m in (student, teacher, heads)]
  optimizer = tr.adamw(student, heads)
  losses = tr.proteus_step(student, teacher, heads, optimizer, images, masks, indices)
  assert torch.isfinite(losses["loss"])
  moved = [any(not torch.equal(a, b) for a, b in zip(old, m.parameters()))
           for old, m in zip(before, (student, teacher, heads))]
  assert moved == [True, False, True]


def test_sdpa_attention_equals_eager():
  torch.manual_seed(0)
  attn = tr.dinov2_attention.MemEffAttention(64, num_heads=4, qkv_bias=True)
  x = torch.randn(3, 17, 64)
  with torch.no_grad():
    eager = attn(x)
    sdpa = tr.SdpaAttention.forward(attn, x)
  torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)

  vit = tr.build_vit("vit_tiny", 14, 56, depth=2, attention="eager").eval()
  images = torch.randn(2, 3, 56, 56)
  with torch.no_grad():
    eager = vit.forward_features(images)
    tr.set_attention(vit, "sdpa")
    assert all(type(b.attn) is tr.SdpaAttention for b in vit.blocks)
    sdpa = vit.forward_features(images)
  torch.testing.assert_close(sdpa["x_prenorm"], eager["x_prenorm"], rtol=1e-5, atol=1e-5)


def test_kd_loss_is_teacher_to_student_kl():
  s, t = torch.randn(3, 10), torch.randn(3, 10)
  p, q = torch.softmax(t, -1).numpy(), torch.softmax(s, -1).numpy()
  assert tr.kd_loss(s, t).item() == pytest.approx(np.mean(np.sum(p * np.log(p / q), -1)),
                                                  rel=1e-5)
