"""What every command-line entry point shares."""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn


def run(main: Callable[[], int | None]) -> NoReturn:
  """Exits with main()'s status; output into a closed pipe (`... | head`) ends quietly.

  When the reader of stdout has gone, Python raises BrokenPipeError at the next write
  and again when it flushes at exit. Pointing stdout at /dev/null first silences the
  second; 141 (128 + SIGPIPE) is what a shell tool killed by SIGPIPE returns.
  """
  try:
    try:
      code = main()
    except SystemExit as e:  # argparse's --help and errors: flushed below all the same.
      code = e.code
    sys.stdout.flush()  # Inside the try: a short output fails here, not at exit.
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 141
  sys.exit(code)
