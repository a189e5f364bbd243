"""The exporter's own error type (a ``ValueError``, so the CLI reports it as one line)."""


class ExportError(ValueError):
    """A model, layer or argument the exporter cannot handle; the message says how to fix it."""
