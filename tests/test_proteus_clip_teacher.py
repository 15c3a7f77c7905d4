"""A transformers CLIP vision directory as a Proteus teacher, by path, end to end; which loss
terms apply to it; and what an unrecognised transformers directory says."""
import json

import pytest

transformers = pytest.importorskip("transformers")

from kt_jax import convert, stages  # noqa: E402
from kt_jax.errors import UserError  # noqa: E402
from kt_jax.stages import proteus as proteus_stage  # noqa: E402
from teacher_reference import perturb  # noqa: E402
from test_trainer import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  """A random tiny CLIPVisionModelWithProjection whose 2x2 token grid at 64 px matches the
  tiny config's ViT/32 student."""
  config = transformers.CLIPVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      image_size=64, patch_size=32, projection_dim=16)
  path = tmp_path_factory.mktemp("clip_teacher")
  perturb(transformers.CLIPVisionModelWithProjection(config), seed=7).save_pretrained(path)
  return str(path)


def test_tiny_proteus_run_with_a_clip_teacher(clip_dir, tmp_path):
  config = tiny_config(**{"teacher.path": clip_dir, "total_steps": 4,
                          "checkpoint_every_steps": 4, "proteus.lambda_fea": 0.0,
                          "proteus.lambda_patch": 0.0})
  stages.run(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(r["fea_loss"] == 0 and r["patch_loss"] == 0 and r["token_loss"] > 0 for r in rows)
  module, _ = convert.load_pretrained(str(tmp_path / "model"))
  assert module.depth == 2  # the trained student was written


def test_clip_teacher_with_patch_terms_is_an_error_before_loading(clip_dir):
  config = tiny_config(**{"teacher.path": clip_dir})
  with pytest.raises(UserError, match="lambda_fea=0 --config.proteus.lambda_patch=0"):
    proteus_stage.validate(config)
  config.proteus.patch_targets = "yes"  # distil its patch tokens anyway: allowed
  proteus_stage.validate(config)


def test_patch_objective_is_read_without_loading(clip_dir, tmp_path):
  assert convert.has_patch_objective(clip_dir) is False
  assert convert.has_patch_objective("random:vit_small_patch16_dinov3") is True
  assert convert.has_patch_objective("random:siglip_base_patch16_224") is False
  module, variables = convert.load_pretrained(clip_dir)
  from kt_jax.convert import kt_format
  kt_format.save(str(tmp_path / "imported"), module, variables)
  assert convert.has_patch_objective(str(tmp_path / "imported")) is False


def test_unsupported_transformers_directory_names_layouts_and_keys(tmp_path):
  model = transformers.BertModel(transformers.BertConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
      vocab_size=50))
  model.save_pretrained(tmp_path)
  with pytest.raises(convert.CheckpointMismatchError) as e:
    convert.load_pretrained(str(tmp_path))
  message = str(e.value)
  assert "'bert'" in message and "CLIP vision tower" in message and "DINOv3 ViT" in message
  assert "embeddings.word_embeddings.weight" in message  # the first keys, not nothing
