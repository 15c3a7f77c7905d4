"""grain random-access sources yielding {"image", "label", "id"} records.

`image` is encoded bytes (folders, ArrayRecord) so decoding runs in the pipeline's worker
threads/processes, or a uint8 HWC array (in memory). `label` is -1 when unlabelled; `id`
is the record's index in the source, stable across epochs, shards and resumption.
Sources satisfy `grain.sources.RandomAccessDataSource` structurally and pickle cheaply, so
they can be sent to grain's worker processes.
"""
import logging
import os
import threading
from typing import Sequence

import numpy as np

from kt_jax import paths

# torchvision's ImageFolder extensions; anything else in the folder is skipped.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_log = logging.getLogger(__name__)


def read_bytes(path: str) -> bytes:
  """A file's bytes, local or remote (gs://... through etils.epath)."""
  if paths.is_remote(path):
    return paths.as_path(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def list_image_folder(path: str, extensions: Sequence[str] = IMG_EXTENSIONS):
  """(files, labels, class_names, skipped) for a class-per-subfolder or a flat folder.

  With subfolders, sorted subfolder names become label ids 0..C-1 (torchvision's
  ImageFolder), files are found recursively and loose files at the top are ignored;
  without subfolders every image is unlabelled (-1). Files are sorted, so ids are stable.
  Hidden files are ignored; other non-image files are returned in `skipped`.
  """
  path = paths.normalise(path)
  if paths.is_remote(path):  # gs://... through etils.epath; local folders through os (faster)
    listdir, isdir = (lambda p: [x.name for x in paths.as_path(p).iterdir()]), paths.isdir
    def walk(top):  # roots spelled with the user's prefix, e.g. gs://bucket/...
      top_path = str(paths.as_path(top))
      for root, dirs, names in paths.as_path(top).walk():
        yield top + str(root)[len(top_path):], dirs, names
  else:
    listdir, isdir = os.listdir, os.path.isdir
    walk = lambda p: os.walk(p, followlinks=True)
  entries = sorted(e for e in listdir(path) if not e.startswith("."))
  classes = [e for e in entries if isdir(paths.join(path, e))]
  files, labels, skipped = [], [], []

  def add(file_path, label):
    if file_path.lower().endswith(tuple(extensions)):
      files.append(file_path)
      labels.append(label)
    else:
      skipped.append(file_path)

  if classes:
    for label, name in enumerate(classes):
      found = [paths.join(root, file_name)
               for root, _, names in walk(paths.join(path, name))
               for file_name in names if not file_name.startswith(".")]
      for file_path in sorted(found):
        add(file_path, label)
  else:
    for file_name in entries:
      add(paths.join(path, file_name), -1)
  return files, labels, tuple(classes), skipped


class ImageFolderSource:
  """Encoded image files from a folder (see `list_image_folder` for the layout)."""

  def __init__(self, path: str, extensions: Sequence[str] = IMG_EXTENSIONS):
    self.root = paths.normalise(os.fspath(path))
    self.paths, labels, self.class_names, self.skipped_files = list_image_folder(
        self.root, extensions)
    self.labels = np.asarray(labels, np.int64)
    if self.skipped_files:
      _log.warning("%s: skipped %d non-image files, e.g. %s", self.root,
                   len(self.skipped_files), self.skipped_files[:3])

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int):
    index = int(index)
    try:
      data = read_bytes(self.paths[index])
    except OSError as e:  # Unreadable file: an empty record, dropped and counted by Decode.
      _log.warning("Cannot read %s: %s", self.paths[index], e)
      data = b""
    return {"image": data, "label": int(self.labels[index]), "id": index}

  def describe(self, index: int) -> str:
    return self.paths[int(index)]

  def __repr__(self) -> str:
    return f"ImageFolderSource(root={self.root!r}, len={len(self)})"


class InMemorySource:
  """uint8 images held in memory, e.g. the shipped photos (`kt_jax.data.shipped`)."""

  def __init__(self, images_uint8, labels=None):
    self.images = images_uint8
    if labels is None:
      labels = np.full(len(images_uint8), -1, np.int64)
    self.labels = np.asarray(labels, np.int64)
    if len(self.labels) != len(self.images):
      raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int):
    index = int(index)
    return {"image": np.asarray(self.images[index]), "label": int(self.labels[index]),
            "id": index}

  def describe(self, index: int) -> str:
    return f"in-memory image {int(index)}"

  def __repr__(self) -> str:
    return f"InMemorySource(len={len(self)})"


class ArrayRecordSource:
  """A split of a TFDS ArrayRecord dataset, read without TensorFlow.

  `path` is a prepared dataset directory (the one holding `dataset_info.json`, as written
  by `kt_jax.data.arrayrecord` or by TFDS itself) or, with `data_dir`, a dataset name
  prepared under `data_dir/name/version` (e.g. "imagenet2012" built as ArrayRecord).
  Image features are returned undecoded (`SkipDecoding`) so that `transforms.Decode`
  decodes them in the workers and counts bad ones.
  """

  def __init__(self, path: str, split: str = "train", data_dir: str | None = None,
               image_key: str = "image", label_key: str = "label"):
    self.path, self.split, self.data_dir = paths.normalise(os.fspath(path)), split, data_dir
    self.image_key, self.label_key = image_key, label_key
    self._source = self.features = None
    self._lock = threading.Lock()
    self._length = len(self._data_source())

  def _data_source(self):
    # Opened lazily, and dropped when pickled: each worker process opens its own files.
    with self._lock:
      if self._source is None:
        self._open()
    return self._source

  def _open(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if self.data_dir is None:
      builder = tfds.builder_from_directory(self.path)
    else:
      builder = tfds.builder(self.path, data_dir=self.data_dir)
    decoders = None
    if isinstance(builder.info.features[self.image_key], tfds.features.Image):
      decoders = {self.image_key: tfds.decode.SkipDecoding()}
    self.features = builder.info.features
    self._source = builder.as_data_source(self.split, decoders=decoders)

  @property
  def class_names(self) -> tuple[str, ...]:
    self._data_source()
    feature = self.features[self.label_key] if self.label_key in self.features else None
    return tuple(getattr(feature, "names", None) or ())

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int):
    index = int(index)
    example = self._data_source()[index]
    label = example.get(self.label_key, -1)
    return {"image": example[self.image_key], "label": int(label), "id": index}

  def describe(self, index: int) -> str:
    return f"{self.path}[{self.split}][{int(index)}]"

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ("_source", "features", "_lock")}

  def __setstate__(self, state):
    self.__dict__.update(state, _source=None, features=None, _lock=threading.Lock())

  def __repr__(self) -> str:
    return f"ArrayRecordSource(path={self.path!r}, split={self.split!r}, len={len(self)})"


class SubsetSource:
  """The records of `parent` at `indices`, in that order, keeping the parent's ids (so a
  held-out split and the training split it was cut from name records the same way)."""

  def __init__(self, parent, indices):
    self.parent = parent
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.parent[int(self.indices[int(index)])]

  def describe(self, index: int) -> str:
    return self.parent.describe(int(self.indices[int(index)]))

  def __repr__(self) -> str:
    return f"SubsetSource({self.parent!r}, len={len(self)})"
