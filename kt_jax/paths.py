"""User paths: local folders, `file://` URLs and cloud URLs (gs://, s3://, ...) alike.

Every path a user gives (workdir, teacher.path, init_from, data.path, eval task paths) goes
through here, so a cloud URL is never mangled into a local folder (`os.path.abspath` turns
`gs://b/x` into `/cwd/gs:/b/x`) and is read through `etils.epath`, as orbax and big_vision
do. `file://` URLs become plain local paths, so the fast local code paths serve them.
Nothing here opens a remote path unless asked to read or list it.
"""
import os
import re

from etils import epath

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme(path: str) -> str:
  """The URL scheme of `path` ("gs", "file", ...), or "" for a plain path."""
  match = _SCHEME.match(str(path))
  return match.group(1).lower() if match else ""


def is_remote(path: str) -> bool:
  """True for URLs that no local file call can open (gs://, s3://, az://, hf://, ...)."""
  return scheme(path) not in ("", "file")


def normalise(path: str) -> str:
  """`file:///a/b` -> `/a/b`; a remote URL stays as it is; a plain path is left relative."""
  path = os.fspath(path)
  if scheme(path) == "file":
    return path[len("file://"):] or "/"
  return path


def absolute(path: str) -> str:
  """Like `os.path.abspath` for local paths (and `file://` URLs); remote URLs unchanged."""
  path = normalise(path)
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def as_path(path: str) -> epath.Path:
  """An `epath.Path` for any user path: pathlib semantics, local or remote."""
  return epath.Path(normalise(path))


def join(path: str, *parts: str) -> str:
  """`os.path.join` for local paths; "/"-joined for URLs (never touching the network)."""
  path = normalise(path)
  if not is_remote(path):
    return os.path.join(path, *parts)
  return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts if p)])


def exists(path: str) -> bool:
  return as_path(path).exists()


def isdir(path: str) -> bool:
  return as_path(path).is_dir()


def isfile(path: str) -> bool:
  path = normalise(path)
  return as_path(path).is_file() if is_remote(path) else os.path.isfile(path)


def read_text(path: str) -> str:
  path = normalise(path)
  if is_remote(path):
    return as_path(path).read_text()
  with open(path) as f:
    return f.read()


def _write(path: str, data, mode: str) -> None:
  """Writes str ("w") or bytes ("wb"): plain files locally, etils.epath for URLs."""
  path = normalise(path)
  with (as_path(path).open(mode) if is_remote(path) else open(path, mode)) as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  _write(path, text, "w")


def write_bytes(path: str, data: bytes) -> None:
  _write(path, data, "wb")


def append_text(path: str, text: str) -> None:
  """Appends `text` to the file at `path` (created if missing).

  Cloud stores have no append: a remote file is read and rewritten whole, which is fine for
  the small logs (metrics.jsonl, ...) this serves, not for big files.
  """
  path = normalise(path)
  if not is_remote(path):
    with open(path, "a") as f:
      f.write(text)
    return
  target = as_path(path)
  old = target.read_text() if target.exists() else ""
  target.write_text(old + text)


def remove(path: str) -> None:
  """Deletes the file at `path`."""
  path = normalise(path)
  if is_remote(path):
    as_path(path).unlink()
  else:
    os.remove(path)


def copy_tree_to(local_dir: str, dest: str) -> list[str]:
  """Copies every file under the local folder `local_dir` to `dest` (local or a cloud URL),
  keeping relative paths and overwriting; returns the destination paths."""
  written = []
  for root, _, files in os.walk(local_dir):
    relative = os.path.relpath(root, local_dir)
    for name in sorted(files):
      parts = [p for p in (relative, name) if p != "."]
      target = join(dest, *parts)
      as_path(target).parent.mkdir(parents=True, exist_ok=True)
      with open(os.path.join(root, name), "rb") as f:
        as_path(target).write_bytes(f.read())
      written.append(target)
  return written


def local_copy(path: str, cache_dir: str | None = None) -> str:
  """A local path holding the file or folder at `path`: itself when local, else a copy.

  For readers that only take local files (torch.load, transformers directories). Copies go
  to `cache_dir` (default: a fresh temporary folder) and are not cleaned up by this function.
  """
  path = normalise(path)
  if not is_remote(path):
    return path
  import tempfile  # pylint: disable=g-import-not-at-top
  src = as_path(path)
  dst = epath.Path(cache_dir or tempfile.mkdtemp(prefix="kt_jax_remote_")) / src.name
  if src.is_dir():
    for root, _, files in src.walk():
      relative = epath.Path(str(root)[len(str(src)):].lstrip("/"))
      (dst / relative).mkdir(parents=True, exist_ok=True)
      for name in files:
        (root / name).copy(dst / relative / name, overwrite=True)
  else:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.copy(dst, overwrite=True)
  return str(dst)
