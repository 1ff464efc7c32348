"""The `sweeps` config group: the study definitions in the top-level sweeps/ folder.

    zipnet-train -m sweeps=paper_open_choices

Hydra finds config groups as folders under its search path; sweeps/ sits beside conf/, not
in it, so this plugin adds the folder that holds it.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class ZipnetSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from zipnet.config import STUDIES_ROOT

        search_path.append(provider="zipnet", path=f"file://{STUDIES_ROOT}")
