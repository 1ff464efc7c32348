"""Errors a user can act on: each names the key or file and what is allowed."""


class ConfigError(ValueError):
    """A config value that zipnet cannot use. The message names the key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class DataError(RuntimeError):
    """A data file that is missing, corrupt or fails its checksum. The message names the file."""


class StoreError(RuntimeError):
    """An MLflow store that cannot be opened (corrupt, read-only, unreachable). The message is
    one line naming the store and the way out."""

    def __init__(self, uri: str, problem: str, fix: str = ""):
        way_out = f"{fix}, or run without tracking: tracking.enabled=false" if fix else \
            "run without tracking: tracking.enabled=false"
        super().__init__(f"MLflow store {uri}: {problem}; {way_out}")
        self.uri = uri
