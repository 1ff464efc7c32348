"""A config's YAML text, as OmegaConf.to_yaml writes it, emitted by libyaml where PyYAML was
built with it: the same text (tests/test_composer.py), about a third of the time. Every job
writes several (its .hydra/ files, config_resolved.yaml, its run's config files)."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf


def to_yaml(cfg: DictConfig | ListConfig, resolve: bool = False) -> str:
    import yaml

    if not getattr(yaml, "__with_libyaml__", False):
        return OmegaConf.to_yaml(cfg, resolve=resolve)
    tree = OmegaConf.to_container(cfg, resolve=resolve, enum_to_str=True)
    return yaml.dump(tree, Dumper=yaml.CSafeDumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
