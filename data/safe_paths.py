"""Keeps paths named inside data files (manifests, lists) within their dataset folder.

A manifest downloaded with a dataset is data, not a command: an entry like
`../../elsewhere.npz`, an absolute path or a symlink pointing out of the folder
must not make a reader open files the dataset does not own. Paths found by
listing a directory are not checked here; paths read from a file's content are.
"""

from __future__ import annotations

import os


class UnsafePathError(ValueError):
  """A path named by a data file resolves outside its dataset folder."""


def confine(folder: str, entry: str, source: str) -> str:
  """Resolves `entry` against `folder`; raises unless it stays strictly inside.

  Args:
    folder: the dataset folder.
    entry: the path as written in `source` (relative to `folder`).
    source: the file that names `entry` (e.g. the manifest), for the message.

  Returns:
    The resolved path (os.path.realpath: symlinks followed) inside the folder.

  Raises:
    UnsafePathError: the resolved path is the folder itself or outside it
      (`..` entries, absolute paths elsewhere, symlinks leading out).
  """
  root = os.path.realpath(folder)
  # realpath follows every symlink on the way, so a link inside the folder that
  # points elsewhere resolves to where it points and is refused below.
  path = os.path.realpath(os.path.join(root, entry))
  if path == root or os.path.commonpath([root, path]) != root:
    raise UnsafePathError(
        f'{source}: entry {entry!r} resolves to {path}, which is not inside the dataset '
        f'folder {root}; entries must name files inside the folder.')
  return path
