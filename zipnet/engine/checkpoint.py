"""A population at a pass boundary, saved and restored: everything the next pass depends on.

The next pass reads each member's parameters, its optimiser's state (SDLM's h and step sizes,
AdamW's moments and step count) and the pass counter. The pass counter is also the lr
schedule's position (OptimSpec.lr_at) and the place in every random stream: the shifts, the
dropout masks and SDLM's curvature sample are drawn afresh each pass from their seeds and the
pass index (streams.py, Population.draw_dropout), so no generator state is stored. Each
member's results so far travel with it, so a resumed run reports every pass once.

On disk, one torch.save'd dict, read back with weights_only=True (tensors and plain values only):

    format, version   "zipnet-checkpoint", 1
    config            JSON of what decides the numbers: per member its settings and the
                      fingerprint of its data; the shifts; the passes where the lr schedule
                      depends on them (lr_end)
    config_hash       sha256 of `config`; a checkpoint is refused for a config with another
    passes_done       the passes trained
    backend, kernel_build   what trained them: the numbers are bit-identical on the same ones
    members           per member: params and optim ({name: tensor}, a leading axis of 1),
                      history (its per-pass rows), population_sizes, population_positions,
                      test_outputs, meta (the caller's strings, e.g. its MLflow run id)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zipnet.engine.members import Member, RunResult
from zipnet.errors import ConfigError, first_line

FORMAT = "zipnet-checkpoint"
VERSION = 1
KEY = "trainer.resume"  # what a refusal names: the key that asked for the checkpoint


def _plain(value):
    """JSON's own view of a value (tuples become lists), so a config compares equal after a round trip."""
    return json.loads(json.dumps(value, sort_keys=True))


def fingerprint(digits) -> str:
    """The data's own fingerprint (zipnet.data.Digits), or else a sha256 of its four tensors."""
    found = getattr(digits, "fingerprint", None)
    if found:
        return found
    digest = hashlib.sha256()
    for name in ("train_x", "train_y", "test_x", "test_y"):
        digest.update(getattr(digits, name).detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def member_config(member: Member, fingerprint: str) -> dict:
    """One member's part of a checkpoint's config: its settings and its data."""
    return _plain({**dataclasses.asdict(member), "data": fingerprint})


def shared_config(members: list[Member], passes: int, shift: int, shift_seed: int) -> dict:
    """The population's part: the shifts, and the passes only where a member's lr depends on them."""
    shared = {"shift": shift, "shift_seed": shift_seed if shift else None}
    if any(m.optim.lr_end is not None and not m.optim.lr_by_pass for m in members):
        shared["passes"] = passes
    return shared


@dataclass
class MemberState:
    """One member at a pass boundary."""

    config: dict
    params: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    population_sizes: list[int] = field(default_factory=list)
    population_positions: list[int] = field(default_factory=list)
    test_outputs: torch.Tensor | None = None
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Checkpoint:
    """Every member of a population (or some of them) after `passes_done` passes."""

    passes_done: int
    shared: dict
    members: list[MemberState]
    backend: str = ""
    kernel_build: str = ""
    source: str = ""  # where it was read from, for messages

    @property
    def config(self) -> dict:
        return {"members": [m.config for m in self.members], **self.shared}

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()

    # --- made from a population, and put back into one ----------------------------------------

    @classmethod
    def of(
        cls,
        pop,
        results: list[RunResult],
        configs: list[dict],
        shared: dict,
        passes_done: int,
        places: list[int] | None = None,
    ) -> Checkpoint:
        """The population's members now; `results` and `configs` per member, in its order, or for the
        members at `places` only."""
        optim = pop.optim.state()
        members = []
        for k, result, config in zip(places or range(len(results)), results, configs):
            members.append(
                MemberState(
                    config=config,
                    params={n: t[k : k + 1].detach().cpu().clone() for n, t in pop.params.items()},
                    optim={n: t[k : k + 1].clone() for n, t in optim.items()},
                    history=[dict(row) for row in result.history],
                    population_sizes=list(result.population_sizes),
                    population_positions=list(result.population_positions),
                    test_outputs=result.test_outputs,
                )
            )
        return cls(passes_done, dict(shared), members, results[0].backend, results[0].kernel_build)

    def member(self, k: int) -> Checkpoint:
        """The checkpoint of member k alone."""
        return dataclasses.replace(self, members=[self.members[k]])

    @classmethod
    def stack(cls, parts: list[Checkpoint]) -> Checkpoint:
        """One population's checkpoint from several, in order: all at the same pass, with the same shifts."""
        first = parts[0]
        for part in parts[1:]:
            if (part.passes_done, part.shared) != (first.passes_done, first.shared):
                raise ConfigError(
                    KEY,
                    f"checkpoints of one population must agree on the passes done and the shifts; "
                    f"{first.source or 'one'} has {first.passes_done} ({first.shared}), "
                    f"{part.source or 'another'} {part.passes_done} ({part.shared})",
                )
        members = [m for part in parts for m in part.members]
        return dataclasses.replace(first, members=members, source=", ".join(p.source for p in parts if p.source))

    def fits(self, configs: list[dict], shared: dict) -> bool:
        """Whether it was written for members of these configs, in this order, and these shifts."""
        here = {"members": configs, **shared}
        return hashlib.sha256(json.dumps(here, sort_keys=True).encode()).hexdigest() == self.config_hash

    def check(self, configs: list[dict], shared: dict) -> None:
        """Refuse, in one line, a checkpoint written for another config than the population's."""
        if self.fits(configs, shared):
            return
        here = {"members": configs, **shared}
        where = self.source or "the checkpoint"
        if len(configs) != len(self.members):
            raise ConfigError(KEY, f"{where} holds {len(self.members)} members; this population has {len(configs)}")
        differs = [f"{name} ({there!r} there, {now!r} here)" for name, there, now in _differences(self.config, here)]
        raise ConfigError(KEY, f"{where} was written for another config: {'; '.join(differs[:3])}")

    def load_into(self, pop) -> None:
        """Set the population's parameters and optimiser state to the checkpoint's (members in order)."""
        pop.params = {n: torch.cat([m.params[n] for m in self.members]).to(pop.device).contiguous() for n in pop.params}
        names = self.members[0].optim.keys()
        pop.optim.load_state({n: torch.cat([m.optim[n] for m in self.members]) for n in names})

    def fill(self, results: list[RunResult]) -> None:
        """Each member's results so far, into the population's fresh results."""
        for result, m in zip(results, self.members):
            result.history = [dict(row) for row in m.history]
            result.population_sizes = list(m.population_sizes)
            result.population_positions = list(m.population_positions)
            result.test_outputs = m.test_outputs

    # --- on disk ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Written whole or not at all: to a temporary file beside `path`, then renamed over it. The
        temporary file is this process's and thread's own: two workers started in the same second
        share Hydra's sweep folder, and one must not rename the other's half-written file."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        torch.save(self._payload(), partial)
        os.replace(partial, path)

    def to_bytes(self) -> bytes:
        """The file save() writes, as bytes (an MLflow artifact)."""
        buffer = io.BytesIO()
        torch.save(self._payload(), buffer)
        return buffer.getvalue()

    def _payload(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "config": json.dumps(self.config, sort_keys=True),
            "config_hash": self.config_hash,
            "passes_done": self.passes_done,
            "backend": self.backend,
            "kernel_build": self.kernel_build,
            "members": [
                {
                    "params": m.params,
                    "optim": m.optim,
                    "history": m.history,
                    "population_sizes": m.population_sizes,
                    "population_positions": m.population_positions,
                    "test_outputs": m.test_outputs,
                    "meta": dict(m.meta),
                }
                for m in self.members
            ],
        }

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ConfigError(KEY, f"{path}: no such checkpoint") from None
        except Exception as err:  # torch names no one error for a file it cannot read
            raise ConfigError(KEY, f"{path} is not a zipnet checkpoint ({first_line(err)})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ConfigError(KEY, f"{path} is not a zipnet checkpoint (no {FORMAT!r} header)")
        if payload.get("version") != VERSION:
            raise ConfigError(
                KEY, f"{path} has checkpoint format version {payload.get('version')!r}; this zipnet reads {VERSION}"
            )
        config = json.loads(payload["config"])
        members = [MemberState(config=c, **m) for c, m in zip(config.pop("members"), payload["members"])]
        found = cls(
            payload["passes_done"], config, members, payload["backend"], payload["kernel_build"], source=str(path)
        )
        if found.config_hash != payload["config_hash"]:
            raise ConfigError(KEY, f"{path} is damaged: its config does not match its config_hash")
        return found


def _differences(there: dict, here: dict, prefix: str = ""):
    """(dotted name, value there, value here) where two configs differ; members named by their place."""
    for key in sorted(set(there) | set(here)):
        a, b = there.get(key), here.get(key)
        if key == "members" and not prefix:
            for k, (ma, mb) in enumerate(zip(a, b)):
                yield from _differences(ma, mb, f"member {k} ")
        elif isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b
