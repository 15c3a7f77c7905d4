"""ViT import/export checked against the real reference code: the official `dinov2` package
and transformers' Dinov2Model / Dinov2WithRegistersModel, with random non-trivial weights."""
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from dinov2.models.vision_transformer import DinoVisionTransformer
from safetensors.torch import save_file

from kt_jax import convert
from kt_jax.convert import vit as vit_convert
from kt_jax.convert.strict import CheckpointMismatchError

WIDTH, DEPTH, HEADS, PATCH, NATIVE = 128, 2, 2, 14, 98  # 7x7 position grid.
TOL = 1e-4  # of the reference's max magnitude (fp32).


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Non-trivial values everywhere: norms around 1, LayerScale around 0.5, the rest random."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.2 * noise)
      elif "ls" in name or "lambda" in name or "layer_scale" in name:
        p.copy_(0.5 + 0.2 * noise)
      else:
        p.copy_(0.2 * noise)
  return model.eval()


def _official(ffn="mlp", block_chunks=0, width=WIDTH):
  model = DinoVisionTransformer(img_size=NATIVE, patch_size=PATCH, embed_dim=width, depth=DEPTH,
                                num_heads=width // 64, init_values=1.0, ffn_layer=ffn,
                                block_chunks=block_chunks)
  return _randomize(model)


def _images(hw, batch=2, seed=1):
  return np.random.RandomState(seed).randn(batch, hw[0], hw[1], 3).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _rel_err(ours, ref):
  ref = np.asarray(ref)
  return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def _apply(module, variables, x, masks=None):
  return jax.jit(lambda v, x, m: module.apply(v, x, m))(variables, x, masks)


@pytest.mark.parametrize("hw", [(NATIVE, NATIVE), (70, 126), (140, 140)])
@pytest.mark.parametrize("with_masks", [False, True])
def test_official_layout_matches_dinov2_code(hw, with_masks):
  ref_model = _official()
  module, variables = vit_convert.convert_state_dict(ref_model.state_dict())
  x = _images(hw)
  n = (hw[0] // PATCH) * (hw[1] // PATCH)
  masks = np.random.RandomState(3).rand(2, n) < 0.4 if with_masks else None
  with torch.no_grad():
    ref = ref_model.forward_features(_nchw(x), masks=None if masks is None else torch.tensor(masks))
  out = _apply(module, variables, x, masks)
  for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"):
    assert _rel_err(out[key], ref[key]) <= TOL, key


def test_official_chunked_swiglu_layout():
  ref_model = _official(ffn="swiglufused", block_chunks=2)
  state = ref_model.state_dict()
  assert any(k.startswith("blocks.1.1.") for k in state)  # really the chunked layout
  module, variables = vit_convert.convert_state_dict(state)
  assert module.ffn == "swiglu"
  x = _images((70, 70))
  with torch.no_grad():
    ref = ref_model.forward_features(_nchw(x))
  out = _apply(module, variables, x)
  assert _rel_err(out["x_prenorm"], ref["x_prenorm"]) <= TOL


def test_timm_layout_through_official_code():
  """timm's layout is the official one without mask_token (and reg_token for registers)."""
  ref_model = _official()
  state = {k: v for k, v in ref_model.state_dict().items() if k != "mask_token"}
  assert vit_convert.detect_layout(state) == "timm"
  module, variables = vit_convert.convert_state_dict(state, config={"pos_interp_offset": 0.1,
                                                                    "pos_interp_antialias": False})
  x = _images((NATIVE, NATIVE))
  with torch.no_grad():
    ref = ref_model.forward_features(_nchw(x))
  assert _rel_err(_apply(module, variables, x)["x_prenorm"], ref["x_prenorm"]) <= TOL


def _hf_model(registers: int, swiglu: bool = False):
  common = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                image_size=NATIVE, patch_size=PATCH, use_swiglu_ffn=swiglu)
  torch.manual_seed(0)
  if registers:
    model = transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
  else:
    model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
  return _randomize(model)


@pytest.mark.parametrize("registers,swiglu", [(0, False), (4, False), (0, True)])
@pytest.mark.parametrize("hw", [(NATIVE, NATIVE), (70, 126), (140, 112)])
def test_hf5_directory_matches_transformers(tmp_path, registers, swiglu, hw):
  ref_model = _hf_model(registers, swiglu)
  ref_model.save_pretrained(tmp_path)
  module, variables = convert.load_pretrained(str(tmp_path))
  assert module.num_register_tokens == registers
  x = _images(hw)
  n = (hw[0] // PATCH) * (hw[1] // PATCH)
  masks = np.random.RandomState(4).rand(2, n) < 0.3
  with torch.no_grad():
    ref = ref_model(pixel_values=_nchw(x), bool_masked_pos=torch.tensor(masks)).last_hidden_state
  out = _apply(module, variables, x, masks)
  ours = np.concatenate([np.asarray(out["x_norm_clstoken"])[:, None],
                         np.asarray(out["x_norm_regtokens"]),
                         np.asarray(out["x_norm_patchtokens"])], axis=1)
  assert _rel_err(ours, ref) <= TOL


# transformers' own 5.x loader renames these 4.x keys (conversion_mapping.py); we write a 4.x
# file by the inverse renaming and let transformers itself confirm it is a valid 4.x checkpoint.
_HF5_TO_HF4 = (("attention.q_proj", "attention.attention.query"),
               ("attention.k_proj", "attention.attention.key"),
               ("attention.v_proj", "attention.attention.value"),
               ("attention.o_proj", "attention.output.dense"))


def test_hf4_layout_matches_transformers(tmp_path):
  ref_model = _hf_model(registers=0)
  state = {}
  for key, value in ref_model.state_dict().items():
    for new, old in _HF5_TO_HF4:
      key = key.replace(new, old)
    state[key] = value.contiguous()
  assert vit_convert.detect_layout(state) == "hf4"
  ref_model.config.save_pretrained(tmp_path)
  save_file(state, os.path.join(tmp_path, "model.safetensors"), metadata={"format": "pt"})
  reloaded, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  module, variables = convert.load_pretrained(str(tmp_path))
  x = _images((70, 126))
  with torch.no_grad():
    ref = reloaded.eval()(pixel_values=_nchw(x)).last_hidden_state
  ours = _apply(module, variables, x)
  assert _rel_err(ours["x_norm_patchtokens"], ref[:, 1:]) <= TOL
  assert _rel_err(ours["x_norm_clstoken"], ref[:, 0]) <= TOL


@pytest.mark.parametrize("registers", [0, 4])
def test_export_hf_round_trip(tmp_path, registers):
  ref_model = _hf_model(registers)
  ref_model.save_pretrained(tmp_path / "src")
  module, variables = convert.load_pretrained(str(tmp_path / "src"))
  vit_convert.export_hf(module, variables["params"], str(tmp_path / "out"))
  exported = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
  assert type(exported).__name__ == type(ref_model).__name__
  x = _images((NATIVE, NATIVE))
  with torch.no_grad():
    ref = exported(pixel_values=_nchw(x)).last_hidden_state
  ours = _apply(module, variables, x)
  assert _rel_err(ours["x_norm_patchtokens"], ref[:, 1 + registers:]) <= TOL


def test_export_dinov2_round_trip_and_cli(tmp_path):
  ref_model = _official()
  torch.save(ref_model.state_dict(), tmp_path / "official.pth")
  from kt_jax.convert.__main__ import main
  assert main(["import", "--src", str(tmp_path / "official.pth"), "--out", str(tmp_path / "kt")]) == 0
  assert json.load(open(tmp_path / "kt" / "model.json"))["fields"]["embed_dim"] == WIDTH
  assert main(["export", "--src", str(tmp_path / "kt"), "--out", str(tmp_path / "back.pth"),
               "--format", "dinov2"]) == 0
  fresh = _official()
  fresh.load_state_dict(torch.load(tmp_path / "back.pth"), strict=True)
  x = _images((70, 126))
  with torch.no_grad():
    ref = ref_model.forward_features(_nchw(x))["x_prenorm"]
    back = fresh.eval().forward_features(_nchw(x))["x_prenorm"]
  np.testing.assert_array_equal(back.numpy(), ref.numpy())
  module, variables = convert.load_pretrained(str(tmp_path / "kt"))
  assert _rel_err(_apply(module, variables, x)["x_prenorm"], ref) <= TOL


def test_mismatched_checkpoint_names_every_bad_key():
  state = dict(_official().state_dict())
  del state["blocks.1.norm2.weight"]
  state["blocks.0.attn.extra.weight"] = torch.zeros(3)
  state["blocks.0.mlp.fc2.bias"] = torch.zeros(WIDTH + 1)
  with pytest.raises(CheckpointMismatchError) as err:
    vit_convert.convert_state_dict(state)
  message = str(err.value)
  for key in ("blocks.1.norm2.weight", "blocks.0.attn.extra.weight", "blocks_0/mlp/fc2/bias"):
    assert key in message


def test_unknown_layout_and_missing_file_are_clear_errors(tmp_path):
  with pytest.raises(CheckpointMismatchError, match="Unrecognised checkpoint layout"):
    convert.convert_state_dict({"foo.weight": torch.zeros(2)})
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    convert.load_pretrained(str(tmp_path / "nope.pth"))
