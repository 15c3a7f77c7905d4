"""Errors the user can act on: a bad flag, config value, path or checkpoint.

Checks raise `UserError` with a message that says what is wrong and what to do; the command
line entry points (`kt_jax.main`, `kt_jax.bench`, `kt_jax.convert`) print it as one line and
exit with status 2, without a traceback. `KT_JAX_DEBUG=1` or `--debug` shows the traceback.
Anything else (a bug, a crash deep in jax) keeps its traceback.
"""
import os
import sys

EXIT_CODE = 2  # what argparse and absl use for usage errors


class UserError(ValueError):
  """Something the user can fix: the message is the whole report. (A ValueError, so callers
  that already expect one for a bad value keep working.)"""


def debug_enabled(argv=None) -> bool:
  argv = sys.argv if argv is None else argv
  return os.environ.get("KT_JAX_DEBUG", "") not in ("", "0") or "--debug" in argv


def one_line(message: str) -> str:
  """Collapses whitespace runs (and newlines) so the message is one line of a terminal."""
  return " ".join(str(message).split())


def report(error: BaseException, prog: str = "kt_jax") -> None:
  """Prints `prog: error: <message>` to stderr (argparse's format for usage errors)."""
  lines = str(error).strip().splitlines() or [type(error).__name__]
  print(f"{prog}: error: {lines[0]}", file=sys.stderr)
  for line in lines[1:]:  # a strict-loading diagnosis lists one kind of mismatch per line
    print(f"  {line.strip()}", file=sys.stderr)


def exit_on_user_error(fn, *args, prog: str = "kt_jax", debug: bool = False, **kwargs):
  """Runs `fn`; a UserError becomes a short report and exit status 2 (unless debugging)."""
  try:
    return fn(*args, **kwargs)
  except UserError as e:
    if debug or debug_enabled():
      raise
    report(e, prog)
    sys.exit(EXIT_CODE)
