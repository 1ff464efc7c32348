"""A PBT member's lineage as its MLflow run records it, and read back (zipnet-report, zipnet-reproduce).

Each copy at the end of pass P (zipnet/sweeps/pbt.py) becomes
- tags `zipnet.pbt.P.copied_from` (the source's run id), `zipnet.pbt.P.copied_from_trial` and
  `zipnet.pbt.P.changes` (`optim.lr 0.01 -> 0.0125`), and `zipnet.pbt.copies` (how many);
- rows of the table `pbt/lineage.csv`: pass, copied_trial, copied_run, param, old, new (one row
  per changed setting; a copy that changed nothing has one row with no param);
- `pbt/pass_P.pt`: the member's checkpoint just after the copy (zipnet/engine/checkpoint.py), its
  weights and optimiser state as the source had them. The member's passes after P follow from it
  and the changed settings alone, so each stretch between copies is replayed on its own.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

PREFIX = "zipnet.pbt."
COUNT = "zipnet.pbt.copies"
TABLE = "pbt/lineage.csv"
COLUMNS = ("pass", "copied_trial", "copied_run", "param", "old", "new")


def state_name(pass_number: int) -> str:
    return f"pbt/pass_{pass_number}.pt"


def _text(value) -> str:
    return "" if value is None else repr(value)


def _value(text: str):
    return None if text == "" else float(text)


def outputs(copies: list) -> tuple[dict[str, str], dict[str, str | bytes]]:
    """The tags and files (name -> text or bytes) that record a member's copies (engine.Copy)."""
    tags, files = {COUNT: str(len(copies))}, {}
    out = io.StringIO()
    table = csv.writer(out, lineterminator="\n")
    table.writerow(COLUMNS)
    for copy in copies:
        p = copy.pass_number
        changes = "; ".join(f"{key} {_text(old)} -> {_text(new)}" for key, (old, new) in copy.changes.items())
        tags[f"{PREFIX}{p}.copied_from"] = copy.source_run
        tags[f"{PREFIX}{p}.copied_from_trial"] = _text(copy.source_trial)
        tags[f"{PREFIX}{p}.changes"] = changes or "none"
        for key, (old, new) in copy.changes.items() or {"": (None, None)}.items():
            table.writerow([p, _text(copy.source_trial), copy.source_run, key, _text(old), _text(new)])
        files[state_name(p)] = copy.state.to_bytes()
    files[TABLE] = out.getvalue()
    return tags, files


@dataclass
class Event:
    """One copy, read back: after `pass_number` the member took `source_run`'s state and went on with `changes`."""

    pass_number: int
    source_run: str
    source_trial: str
    changes: dict[str, tuple] = field(default_factory=dict)  # key -> (old, new)


def read_table(text: str) -> list[Event]:
    """lineage.csv's rows as events, in pass order."""
    events: dict[int, Event] = {}
    for row in csv.DictReader(io.StringIO(text)):
        p = int(row["pass"])
        event = events.setdefault(p, Event(p, row["copied_run"], row["copied_trial"]))
        if row["param"]:
            event.changes[row["param"]] = (_value(row["old"]), _value(row["new"]))
    return [events[p] for p in sorted(events)]


def from_tags(tags: dict[str, str]) -> list[tuple[int, str, str, str]]:
    """(pass, source run, source trial, changes text) per copy, from a run's tags, in pass order."""
    passes = sorted({int(k[len(PREFIX) :].split(".")[0]) for k in tags if k.startswith(PREFIX) and k != COUNT})
    return [
        (
            p,
            tags.get(f"{PREFIX}{p}.copied_from", ""),
            tags.get(f"{PREFIX}{p}.copied_from_trial", ""),
            tags.get(f"{PREFIX}{p}.changes", ""),
        )
        for p in passes
    ]
