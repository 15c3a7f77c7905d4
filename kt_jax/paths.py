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
