"""Writes an image folder as a TFDS ArrayRecord dataset, without TensorFlow.

Images are stored as their original encoded bytes in a `tfds.features.Image` feature:
handing that feature bytes skips encoding (encoding arrays would need TensorFlow), TFDS
readers with TensorFlow still decode them, and `sources.ArrayRecordSource` reads the bytes
back untouched with `SkipDecoding`. Records keep the folder's sorted order (no TFDS key
shuffling), so record i is file i of `sources.list_image_folder` and ids match.

CLI: python -m kt_jax.data.arrayrecord --src <folder> --out <dir> --shards N
"""
import argparse
import numpy as np

from kt_jax import paths as kt_paths
from kt_jax.data import sources


def write_image_folder_as_arrayrecord(folder: str, out_dir: str, num_shards: int = 1,
                                      split: str = "train", dataset_name: str = "image_folder",
                                      extensions=sources.IMG_EXTENSIONS) -> int:
  """Copies every image file's bytes into `num_shards` ArrayRecord files; returns the count.

  Labelled folders get a ClassLabel `label` (names = subfolder names); flat folders get no
  label feature (the source then reports -1). `file_name` keeps the path relative to
  `folder`. Files are not decoded here: bad ones are counted later by the loader.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top

  folder, out_dir = kt_paths.normalise(folder), kt_paths.absolute(out_dir)
  paths, labels, class_names, _ = sources.list_image_folder(folder, extensions)
  if not paths:
    raise ValueError(f"No images under {folder}.")
  if not 1 <= num_shards <= len(paths):
    raise ValueError(f"num_shards must be in [1, {len(paths)}], got {num_shards}.")
  spec = {"image": tfds.features.Image(shape=(None, None, 3)),
          "file_name": tfds.features.Text()}
  if class_names:
    spec["label"] = tfds.features.ClassLabel(names=list(class_names))
  features = tfds.features.FeaturesDict(spec)

  kt_paths.as_path(out_dir).mkdir(parents=True, exist_ok=True)
  template = naming.ShardedFileTemplate(data_dir=out_dir, dataset_name=dataset_name,
                                        split=split, filetype_suffix="array_record")
  num_bytes = 0

  def serialized(indices):
    nonlocal num_bytes  # Streamed, so a shard never has to fit in memory.
    for i in indices:
      data = sources.read_bytes(paths[i])
      num_bytes += len(data)
      example = {"image": data, "file_name": paths[i][len(folder):].lstrip("/")}
      if class_names:
        example["label"] = labels[i]
      yield None, features.serialize_example(example)

  shards = np.array_split(np.arange(len(paths)), num_shards)
  for shard, indices in enumerate(shards):
    file_adapters.ArrayRecordFileAdapter.write_examples(
        template.sharded_filepath(shard_index=shard, num_shards=num_shards),
        serialized(indices))
  shard_lengths = [len(indices) for indices in shards]
  split_info = tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths,
                                   num_bytes=num_bytes, filename_template=template)
  tfds.folder_dataset.write_metadata(
      data_dir=out_dir, features=features, split_infos=[split_info],
      filename_template=template, check_data=False,
      description=f"Encoded image files of {kt_paths.absolute(folder)}.")
  return len(paths)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--src", required=True, help="image folder (class subfolders or flat)")
  parser.add_argument("--out", required=True, help="output dataset directory")
  parser.add_argument("--shards", type=int, default=1)
  parser.add_argument("--split", default="train")
  parser.add_argument("--name", default="image_folder", help="dataset name in file names")
  args = parser.parse_args(argv)
  count = write_image_folder_as_arrayrecord(args.src, args.out, args.shards, args.split,
                                            args.name)
  print(f"Wrote {count} records in {args.shards} shards to {args.out}")


if __name__ == "__main__":
  main()
