"""The exporter's own error types (``ValueError``s, so the CLI reports them as one line)."""


class ExportError(ValueError):
    """A model, layer or argument the exporter cannot handle; the message says how to fix it."""


class ValidationError(ExportError):
    """The exported model disagrees with Keras beyond the tolerance."""
