"""Errors a user can act on: each names the key or file and what is allowed."""


class ConfigError(ValueError):
    """A config value that zipnet cannot use. The message names the key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class DataError(RuntimeError):
    """A data file that is missing, corrupt or fails its checksum. The message names the file."""


class StoreError(RuntimeError):
    """A tracking or study store that cannot be opened or written. The message names it and the way out."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none). A gRPC error (a
    storage behind zipnet-storage-proxy) says its status and details, not its wrapper's first line."""
    code, details = getattr(err, "code", None), getattr(err, "details", None)
    if callable(code) and callable(details) and details():
        return f"gRPC {getattr(code(), 'name', code())}: {details().strip().splitlines()[0]}"
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
