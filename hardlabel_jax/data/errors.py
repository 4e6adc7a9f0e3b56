"""The error every data-source loader raises for a source it cannot serve."""


class DataSourceError(ValueError):
  """A data source is unknown, not prepared, or malformed; the message says how to fix it."""
