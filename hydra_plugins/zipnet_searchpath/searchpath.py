"""`sweeps=NAME` for zipnet's apps: the study definitions as the config group `sweeps`.

An installed package keeps the studies inside its primary config directory (zipnet/conf/sweeps/),
where Hydra finds the group by itself. A checkout keeps them in the top-level sweeps/ folder,
beside conf/ rather than in it; a search path entry names a config root, not a group, so this
plugin adds the folder through a config source that serves one folder as one group:
`zipnet-group:///repo/sweeps` is the group `sweeps`. Only zipnet's own apps get it: the
plugin acts when the primary config directory is zipnet's.
"""

from __future__ import annotations

import os

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from zipnet import resources


def _header(text: str) -> dict[str, str | None]:
    """The `# @key value` lines at the top of a config file (Hydra reads `# @package`)."""
    header: dict[str, str | None] = {"package": None}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith("#") or not line.lstrip("#").strip().startswith("@"):
            break
        key, _, value = line.lstrip("#").strip()[1:].partition(" ")
        header[key] = value.strip()
    return header


class FolderGroupSource(ConfigSource):
    """A folder of yaml files served as one config group, named after the folder."""

    @staticmethod
    def scheme() -> str:
        return "zipnet-group"

    @property
    def group(self) -> str:
        return os.path.basename(self.path.rstrip("/"))

    def _file(self, config_path: str) -> str | None:
        """The file behind `group/name`, or None when the path is not one of this group's configs."""
        group, _, name = config_path.partition("/")
        if group != self.group or not name or "/" in name:
            return None
        return os.path.join(self.path, name if name.endswith(".yaml") else f"{name}.yaml")

    def load_config(self, config_path: str) -> ConfigResult:
        path = self._file(config_path)
        if path is None or not os.path.isfile(path):
            raise ConfigLoadError(f"Config not found : {config_path} in {self.path}")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return ConfigResult(
            config=OmegaConf.create(text),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header=_header(text),
        )

    def available(self) -> bool:
        return os.path.isdir(self.path)

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", self.group) and self.available()

    def is_config(self, config_path: str) -> bool:
        path = self._file(config_path)
        return path is not None and os.path.isfile(path)

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path == "" and results_filter in (None, ObjectType.GROUP) and self.available():
            return [self.group]
        if config_path == self.group and results_filter in (None, ObjectType.CONFIG) and self.available():
            return sorted(f[: -len(".yaml")] for f in os.listdir(self.path) if f.endswith(".yaml"))
        return []


class ZipnetSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        conf, sweeps = resources.conf_dir(), resources.sweeps_dir()
        primary = [e.path.removeprefix("file://") for e in search_path.get_path() if e.provider == "main"]
        if str(conf) not in primary or sweeps.parent == conf:
            return  # another app, or the studies already sit in the primary config directory
        search_path.append("zipnet-sweeps", f"{FolderGroupSource.scheme()}://{sweeps}")
