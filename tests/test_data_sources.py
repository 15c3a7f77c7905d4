"""Sources and decoding on a real, messy image folder; folder -> ArrayRecord round trip."""
import os
import pickle
import struct
import sys
import zlib

import grain
import numpy as np
import pytest
import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

from kt_jax.data import arrayrecord
from kt_jax.data import sources
from kt_jax.data import transforms as T

GOOD = ("cats/chelsea.jpg", "cats/chelsea_grey.png", "cats/chelsea_cmyk.jpg",
        "cats/chelsea_exif6.jpg", "cats/chelsea_grey16.png", "cats/chelsea_rgb48.png",
        "cats/chelsea_palette.png", "cats/chelsea_rgba.png", "photos/coffee.png",
        "photos/china.jpg", "photos/flower.jpg")
BAD = ("photos/corrupt.jpg", "photos/truncated.jpg", "photos/zero.png")


def _png16(array: np.ndarray) -> bytes:
  """A 16-bit PNG written by hand (PIL cannot write 48-bit RGB), to test decoding."""
  height, width = array.shape[:2]
  colour_type = 2 if array.ndim == 3 else 0
  rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data)))

  header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
          + chunk(b"IEND", b""))


def _small(array, width=90):
  img = Image.fromarray(array)
  return np.asarray(img.resize((width, round(width * img.height / img.width))))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """Returns (root, originals): originals holds the exact arrays behind lossless files."""
  root = tmp_path_factory.mktemp("images")
  os.makedirs(root / "cats")
  os.makedirs(root / "photos")
  cat = _small(skimage.data.chelsea())
  grey = cat[..., 1]
  # 16-bit files whose high byte is the 8-bit image and whose low byte is noise.
  grey16 = (grey.astype(np.uint16) * 256 + np.arange(grey.size).reshape(grey.shape) % 256
            ).astype(np.uint16)
  rgb48 = cat.astype(np.uint16) * 256 + 255 - cat
  rgba = np.concatenate([cat, np.full(cat.shape[:2] + (1,), 40, np.uint8)], -1)
  Image.fromarray(cat).save(root / "cats/chelsea.jpg", quality=90)
  Image.fromarray(grey).save(root / "cats/chelsea_grey.png")
  Image.fromarray(cat).convert("CMYK").save(root / "cats/chelsea_cmyk.jpg")
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: stored 90 degrees anticlockwise of upright.
  Image.fromarray(cat).save(root / "cats/chelsea_exif6.jpg", exif=exif)
  Image.fromarray(grey16).save(root / "cats/chelsea_grey16.png")
  (root / "cats/chelsea_rgb48.png").write_bytes(_png16(rgb48))
  Image.fromarray(cat).quantize(32).save(root / "cats/chelsea_palette.png", transparency=0)
  Image.fromarray(rgba).save(root / "cats/chelsea_rgba.png")
  coffee = _small(skimage.data.coffee())
  Image.fromarray(coffee).save(root / "photos/coffee.png")
  sample = load_sample_images()
  for path, image in zip(sample.filenames, sample.images):
    Image.fromarray(_small(image)).save(root / "photos" / os.path.basename(path))
  good_jpeg = (root / "cats/chelsea.jpg").read_bytes()
  (root / "photos/corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
  (root / "photos/truncated.jpg").write_bytes(good_jpeg[:len(good_jpeg) // 2])
  (root / "photos/zero.png").write_bytes(b"")
  (root / "photos/notes.txt").write_text("not an image")
  (root / "photos/.hidden.jpg").write_bytes(good_jpeg)
  originals = {"cats/chelsea_grey.png": np.stack([grey] * 3, -1),
               "cats/chelsea_grey16.png": np.stack([grey] * 3, -1),
               "cats/chelsea_rgb48.png": cat, "cats/chelsea_rgba.png": cat,
               "photos/coffee.png": coffee}
  return root, originals


def test_image_folder_layout(folder):
  root, _ = folder
  source = sources.ImageFolderSource(root)
  assert isinstance(source, grain.sources.RandomAccessDataSource)
  assert source.class_names == ("cats", "photos")
  relative = [os.path.relpath(p, root) for p in source.paths]
  assert sorted(relative) == sorted(GOOD + BAD) and relative == sorted(relative)
  assert [os.path.relpath(p, root) for p in source.skipped_files] == ["photos/notes.txt"]
  for i, rel in enumerate(relative):
    record = source[i]
    assert record["id"] == i
    assert record["label"] == ("cats", "photos").index(rel.split("/")[0])
    assert record["image"] == (root / rel).read_bytes()


def test_flat_folder_is_unlabelled(folder, tmp_path):
  root, _ = folder
  for name in ("b.png", "a.jpg"):
    (tmp_path / name).write_bytes((root / "photos/coffee.png").read_bytes())
  source = sources.ImageFolderSource(tmp_path)
  assert [os.path.basename(p) for p in source.paths] == ["a.jpg", "b.png"]
  assert [source[i]["label"] for i in range(2)] == [-1, -1] and source.class_names == ()


@pytest.mark.parametrize("rel", GOOD)
def test_decode_matches_pil(folder, rel):
  root, originals = folder
  out = T.Decode().map({"image": (root / rel).read_bytes(), "label": 0, "id": 0})["image"]
  assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[-1] == 3
  if rel in originals:  # Lossless files: the very pixels that were written.
    expected = originals[rel]
  elif rel == "cats/chelsea_exif6.jpg":  # Orientation 6: turn the stored pixels clockwise.
    expected = np.rot90(np.asarray(Image.open(root / rel).convert("RGB")), k=-1)
  else:  # JPEG, CMYK JPEG, palette PNG: PIL's own RGB conversion.
    expected = np.asarray(Image.open(root / rel).convert("RGB"))
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("rel", BAD)
def test_decode_marks_bad_files(folder, rel):
  root, _ = folder
  out = T.Decode().map({"image": (root / rel).read_bytes(), "label": 1, "id": 5})
  assert out["image"] is None and out["error"] and (out["label"], out["id"]) == (1, 5)


def test_arrayrecord_round_trip(folder, tmp_path):
  root, _ = folder
  folder_source = sources.ImageFolderSource(root)
  out_dir = tmp_path / "ds"
  count = arrayrecord.write_image_folder_as_arrayrecord(root, out_dir, num_shards=3)
  assert count == len(folder_source)
  shards = sorted(f for f in os.listdir(out_dir) if ".array_record-" in f)
  assert shards == [f"image_folder-train.array_record-0000{i}-of-00003" for i in range(3)]
  source = sources.ArrayRecordSource(out_dir, split="train")
  assert len(source) == len(folder_source)
  assert source.class_names == ("cats", "photos")
  for i in range(len(source)):
    record = source[i]
    assert record["image"] == (root / folder_source.paths[i]).read_bytes()
    assert record["label"] == folder_source[i]["label"] and record["id"] == i
  # Pickled for grain worker processes: reopens its files lazily.
  clone = pickle.loads(pickle.dumps(source))
  assert clone._source is None and clone[4]["image"] == source[4]["image"]
  assert "tensorflow" not in sys.modules


def test_arrayrecord_cli_flat_folder(folder, tmp_path):
  root, _ = folder
  src = tmp_path / "flat"
  src.mkdir()
  for name in ("x.jpg", "y.png"):
    (src / name).write_bytes((root / "cats/chelsea.jpg").read_bytes())
  out = tmp_path / "data/flat/1.0.0"
  arrayrecord.main(["--src", str(src), "--out", str(out), "--shards", "2", "--name", "flat"])
  for source in (sources.ArrayRecordSource(out),
                 sources.ArrayRecordSource("flat", data_dir=tmp_path / "data")):
    assert len(source) == 2 and source.class_names == ()
    assert [source[i]["label"] for i in range(2)] == [-1, -1]
    assert source[1]["image"] == (src / "y.png").read_bytes()


def test_in_memory_source():
  photos = np.stack([_small(skimage.data.chelsea(), 32)[:20],
                     _small(skimage.data.coffee(), 32)[:20]])
  source = sources.InMemorySource(photos, [3, 4])
  assert isinstance(source, grain.sources.RandomAccessDataSource) and len(source) == 2
  record = source[1]
  np.testing.assert_array_equal(record["image"], photos[1])
  assert (record["label"], record["id"]) == (4, 1)
  assert sources.InMemorySource(photos)[0]["label"] == -1
  with pytest.raises(ValueError):
    sources.InMemorySource(photos, [1])
