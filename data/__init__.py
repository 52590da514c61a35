"""Dataset builders and loaders (one module per dataset; see data/prepare.py)."""

import logging


class _DropUnpreparedWarning(logging.Filter):
  """Drops TFDS's 'Variant folder ... has no dataset_info.json' warning.

  TFDS logs it whenever a builder looks at a folder that holds no finished build;
  every loader here then raises `not_prepared_error`, which says the same thing and
  how to fix it, so the warning only adds a confusing line before the error.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return 'has no dataset_info.json' not in record.getMessage()


logging.getLogger('absl').addFilter(_DropUnpreparedWarning())
