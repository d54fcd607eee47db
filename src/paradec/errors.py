"""The one exception type users see: a message meant to be read, not a traceback."""


class ParadecError(Exception):
    """A user-facing error (bad model spec, bad parameters, prompt too long, ...)."""


class ContextOverflowError(ParadecError):
    """The prompt (plus what must be generated) does not fit the model's context window."""
