"""A sweep's job configs, composed once per distinct set of config-group choices.

Hydra composes each job from scratch: the defaults tree, every config file, the merge
(about 0.15 s a job here). A sweep's jobs differ mostly in values (`optim.lr=0.04`), not in
which config files they use (`targets=pm0.8`). So the config-group overrides pick a base,
composed once by Hydra's own loader; each job is a copy of its base (unpickled: a third of
a deepcopy's time) with its value overrides applied as Hydra applies them
(`OmegaConf.update(..., merge=True)` on the struct config), and its `hydra.overrides.task`
and `hydra.job.override_dirname` set as Hydra sets them. Anything else (`+key`, `~key`,
`key@package`, `hydra.*`, or an override the base refuses) is composed in full, so errors
read exactly as Hydra's.
tests/test_composer.py checks every job against full composition.
"""

from __future__ import annotations

import pickle

from omegaconf import DictConfig, OmegaConf, open_dict, read_write


class Composer:
    def __init__(self, config_loader, master: DictConfig):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.loader, self.master = config_loader, master
        self.parser = OverridesParser.create()
        self.bases: dict[tuple[str, ...], bytes] = {}  # choices -> the base config, pickled
        self._parsed: dict[str, object] = {}  # override text -> Hydra's parsed Override
        self._groups: dict[str, bool] = {}  # key -> whether it names a config group
        self.full = 0  # jobs composed in full (for tests and benchmarks)

    def compose(self, overrides: list[str]) -> DictConfig:
        """The job's config, equal to `config_loader.load_sweep_config(master, overrides)`."""
        parsed = self._parse(overrides)
        values = [o for o in parsed if self._is_value(o)]
        choices = tuple(o.input_line for o in parsed if not self._is_value(o))
        if choices not in self.bases:
            base = self.loader.load_sweep_config(self.master, list(choices))
            self.bases[choices] = pickle.dumps(base, protocol=pickle.HIGHEST_PROTOCOL)
        cfg = pickle.loads(self.bases[choices])
        try:
            for o in values:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        except Exception:  # what Hydra would refuse: let it refuse, in its own words
            self.full += 1
            return self.loader.load_sweep_config(self.master, list(overrides))
        self._record(cfg, parsed)
        return cfg

    def _parse(self, overrides: list[str]) -> list:
        """Hydra's parse of each override, once per distinct text (a study repeats its choices).
        Values are read from an Override, never written, so one can serve many jobs."""
        new = [o for o in dict.fromkeys(overrides) if o not in self._parsed]
        for text, o in zip(new, self.parser.parse_overrides(new)):
            self._parsed[text] = o
        return [self._parsed[o] for o in overrides]

    def _is_value(self, o) -> bool:
        """A plain `key=value` change of a key outside `hydra`, that names no config group."""
        if o.package is not None or o.is_add() or o.is_force_add() or o.is_delete() or o.is_hydra_override():
            return False
        if o.is_sweep_override():
            return False
        key = o.key_or_group
        if key not in self._groups:
            self._groups[key] = bool(self.loader.get_group_options(key))
        return not self._groups[key]

    def _record(self, cfg: DictConfig, parsed) -> None:
        """What Hydra writes about a job's overrides, written as it would for these."""
        from hydra._internal.config_loader_impl import get_overrides_dirname

        job = cfg.hydra.job.config.override_dirname
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in parsed]
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=list(parsed), kv_sep=job.kv_sep, item_sep=job.item_sep, exclude_keys=job.exclude_keys
            )
