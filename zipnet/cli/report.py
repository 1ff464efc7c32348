"""zipnet-report: a leaderboard and per-factor effect tables from the MLflow store.

    zipnet-report                                  every run in experiment `zipnet`
    zipnet-report --study paper_open_choices       one Optuna study's trials
    zipnet-report --parent RUN_ID --top 20         one multirun's jobs
    zipnet-report --tag zipnet.git_commit=abc123   any tag filter (repeatable)
    zipnet-report --parent RUN_ID --paired model.init   paired differences between the levels of a key

Reads the runs with `mlflow.search_runs` (a pandas DataFrame; a run's metric there is its
last logged value, i.e. the final pass), prints the tables, and writes leaderboard.csv/.md,
effects.csv/.md, summary.csv/.md and one effect plot per factor (effect_<factor>.png) to
--out (default reports/<study|experiment>); for a study also Optuna's parameter importances
(importances.csv/.md); for a PBT study the best member's lineage (lineage.csv/.md: which run's
weights trained which passes, each copy's changes, the lr per pass). With --study or --parent,
the same files are logged to the parent run under `report/`.

The leaderboard ranks finished runs by final test error (pruned ones too with
--include-pruned); where runs carry it, a column gives the % of test digits rejected for
1% error on the rest (the paper's 12.1%). The effect table has, for every factor that
varies between those runs, the final test error per level as mean ± std and as median and
quartiles (a few runs stuck at 90% error move the mean, not the median); a numeric factor
with many values (a log-scaled lr) is cut into quartiles. Keys whose values always change
together (the target pair) are one factor, under one label (`targets`: pm0.6 for ±0.6).

`--paired KEY` adds the paired view (paired.csv/.md): runs that share every config key but KEY
(the pairing keys of --pair-by, default `seed` and `data.seed`, among them) are pairs, and for
every two levels a, b of KEY it gives the mean of b - a over the pairs in final test error
(points) and test MSE (the final test loss), with a 95% Student t interval (zipnet/stats.py),
and McNemar's exact test on the per-digit errors pooled over the pairs, read from each run's
test_misses.json; a run without that file (a lean trial, or one logged before the file existed)
leaves its pairs out of McNemar's test only. `--paired KEY,KEY` takes keys that change together
as one factor (SDLM at its own rate against SGD at its: `--paired optim.name,optim.lr`).
scripts/usps_questions.py computes the same test from its own store.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zipnet import paper, stats, tracking
from zipnet.sweeps import storage as stores
from zipnet.tracking import outputs

PARENT_ROLES = ("study", "multirun")
COLUMNS = {  # leaderboard column -> search_runs column
    "train/error": "metrics.train/error",
    "test/error": "metrics.test/error",
    "train/misses": "metrics.train/misses",
    "test/misses": "metrics.test/misses",
    "train/mse": "metrics.train/loss",
    "test/mse": "metrics.test/loss",
}
OPTIONAL = {
    "test/reject_at_1pct": f"metrics.{tracking.REJECT_METRIC}",  # shown only where some run has them
    paper.GAP: f"metrics.{paper.GAP}",
}
RANKS = ("test/error", paper.GAP)  # what a leaderboard can rank by (the gap: zipnet/paper.py)
SUMMARY = ("train/error", "train/loss", "test/error", "test/loss", paper.GAP, tracking.REJECT_METRIC)
MAX_LEVELS = 6
PAIR_BY = ("seed", "data.seed")  # what a paired comparison holds equal besides the rest of the config
PAIRED = {"test/error": "Δ test error, points", "test/loss": "Δ test MSE"}  # metric -> its column in paired.md


# keys that a sweep sets together, shown as one factor under this label
LABELS = {("data.target_negative", "data.target_positive"): "targets"}


def filter_string(
    study: str | None = None,
    parent: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> str:
    wanted = dict(tags or {})
    if study:
        wanted["zipnet.study"] = study
    if parent:
        wanted["mlflow.parentRunId"] = parent
    return tracking.where(tags=wanted, params=params, not_tags={"zipnet.role": PARENT_ROLES})


def load_runs(
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    study: str | None = None,
    parent: str | None = None,
    tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
    params: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The selected runs (parents excluded) as mlflow.search_runs returns them."""
    from mlflow import MlflowClient

    uri = tracking.resolve_uri(tracking_uri)
    if MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment) is None:
        raise SystemExit(f"zipnet-report: error: no experiment {experiment!r} in {uri}")
    return tracking.search_runs(
        uri,
        experiment_names=[experiment],
        filter_string=filter_string(study, parent, tags, params),
        max_results=100_000,
    )


def _status(df: pd.DataFrame) -> pd.Series:
    return df["tags.zipnet.status"] if "tags.zipnet.status" in df else pd.Series("finished", index=df.index)


def leaderboard(df: pd.DataFrame, top: int = 10, include_pruned: bool = False, by: str = "test/error") -> pd.DataFrame:
    """The top runs by final test error (or `by`): overrides, train/test error, misses and MSE,
    and the rejection rate at 1% error and the gap to the paper where the runs have them."""
    keep = ("finished", "pruned") if include_pruned else ("finished",)
    runs = df[_status(df).isin(keep)]
    runs = runs[runs.get("metrics.test/error", pd.Series(dtype=float)).notna()] if len(runs) else runs
    out = pd.DataFrame(
        {
            "run_id": runs["run_id"] if len(runs) else [],
            "name": runs.get("tags.mlflow.runName", pd.Series("", index=runs.index)),
            "status": _status(runs) if len(runs) else [],
            "passes": pd.to_numeric(runs.get("tags.zipnet.passes_done", pd.Series(index=runs.index, dtype=float))),
            **{name: runs.get(col, pd.Series(index=runs.index, dtype=float)) for name, col in COLUMNS.items()},
            **{name: runs[col] for name, col in OPTIONAL.items() if col in runs and runs[col].notna().any()},
            "overrides": runs.get("tags.zipnet.overrides", pd.Series("", index=runs.index)),
        }
    )
    for col in ("train/misses", "test/misses", "passes"):
        out[col] = out[col].astype("Int64")
    if by not in out:
        out[by] = float("nan")
    out = out.sort_values([by, "test/error", "test/mse", "run_id"], kind="stable").head(top).reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    return out


@dataclass(frozen=True)
class Factor:
    """One or more config keys whose values change together between the runs."""

    label: str
    keys: tuple[str, ...]


def config_keys(df: pd.DataFrame) -> list[str]:
    """The config keys (params) that decide what was trained: not how it was watched or saved."""
    keys = (col[len("params.") :] for col in df.columns if col.startswith("params."))
    return sorted(k for k in keys if not (k.startswith(tracking.NOT_TRAINING) or k.startswith("sweep.")))


def varying(df: pd.DataFrame) -> list[str]:
    """Config keys (params) whose value differs between the runs."""
    return [key for key in config_keys(df) if df[f"params.{key}"].nunique(dropna=False) > 1]


def factors(df: pd.DataFrame) -> list[Factor]:
    """The varying keys, those that always change together (the same runs share a value in
    each) taken as one factor: their effects cannot be told apart."""
    groups: dict[tuple, list[str]] = {}
    for key in varying(df):
        # codes in order of first appearance, a missing value one level too: the same runs, the same codes
        partition = tuple(pd.factorize(df[f"params.{key}"].astype(object), use_na_sentinel=False)[0])
        groups.setdefault(partition, []).append(key)
    out = [Factor(LABELS.get(tuple(keys), " + ".join(keys)), tuple(keys)) for keys in groups.values()]
    return sorted(out, key=lambda f: f.label)


def _target_label(negative: str, positive: str) -> str:
    """pm0.6 for targets -0.6 and 0.6, as the `targets` config option is named; else both values."""
    return f"pm{positive}" if float(negative) == -float(positive) else f"{negative}/{positive}"


def levels(df: pd.DataFrame, factor: Factor) -> pd.Series:
    """Each run's level of `factor`."""
    if len(factor.keys) == 1:
        return _levels(df[f"params.{factor.keys[0]}"])
    # a key one level lacks (SDLM's mu beside SGD) reads "(not set)", as in a single key's levels
    values = df[[f"params.{k}" for k in factor.keys]].astype(object).where(lambda v: v.notna(), "(not set)").astype(str)
    if factor.label == "targets":
        return pd.Series([_target_label(*row) for row in values.itertuples(index=False)], index=df.index)
    return values.agg(", ".join, axis=1)


def _levels(values: pd.Series) -> pd.Series:
    """The level of each run; many numeric values become quartile bins, in numeric order.
    A run without the key (an SDLM setting in an SGD run) is at the level "(not set)"."""
    present = values.notna()
    numeric = pd.to_numeric(values[present], errors="coerce")
    labels = values.astype(str).where(present, "(not set)")
    fractional = numeric.notna().all() and bool((numeric % 1 != 0).any())
    if len(numeric) and numeric.notna().all() and numeric.nunique() > (4 if fractional else MAX_LEVELS):
        bins = pd.qcut(numeric, q=4, duplicates="drop")
        name = {b: f"{max(b.left, numeric.min()):.3g} to {b.right:.3g}" for b in bins.cat.categories}
        labels[present] = bins.map(name).astype(str)
        order = [name[b] for b in bins.cat.categories] + (["(not set)"] if not present.all() else [])
        return pd.Series(pd.Categorical(labels, categories=order, ordered=True), index=values.index)
    return labels


STATS = ("mean", "std", "median", "q1", "q3")


def _stats(values: pd.Series) -> dict[str, float]:
    """Mean and std beside the median and quartiles, which a few stuck runs do not move."""
    values = pd.to_numeric(values).dropna()
    return {
        "mean": float(values.mean()),
        "std": float(values.std()) if len(values) > 1 else float("nan"),
        "median": float(values.median()),
        "q1": float(values.quantile(0.25)),
        "q3": float(values.quantile(0.75)),
    }


def effects(df: pd.DataFrame, metric: str = "test/error") -> pd.DataFrame:
    """The final `metric` per level of every swept factor (finished runs): mean, std, median, quartiles."""
    runs = df[_status(df) == "finished"] if len(df) else df
    column = f"metrics.{metric}"
    rows = []
    if len(runs) and column in runs:
        for factor in factors(runs):
            for level, values in runs[column].groupby(levels(runs, factor), sort=True, observed=True):
                rows.append(
                    {
                        "factor": factor.label,
                        "level": level,
                        "runs": int(values.count()),
                        **{f"{stat} {metric}": v for stat, v in _stats(values).items()},
                    }
                )
    return pd.DataFrame(rows, columns=["factor", "level", "runs", *(f"{stat} {metric}" for stat in STATS)])


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Each final figure over the selected finished runs (e.g. a config over seeds): mean ± std,
    median and quartiles, min and max."""
    runs = df[_status(df) == "finished"] if len(df) else df
    rows = []
    for metric in SUMMARY:
        values = pd.to_numeric(runs[f"metrics.{metric}"]) if f"metrics.{metric}" in runs else pd.Series(dtype=float)
        if values.count():
            rows.append(
                {
                    "metric": metric,
                    "runs": int(values.count()),
                    **_stats(values),
                    "min": float(values.min()),
                    "max": float(values.max()),
                }
            )
    return pd.DataFrame(rows, columns=["metric", "runs", *STATS, "min", "max"])


def effect_plots(df: pd.DataFrame, out: Path, metric: str = "test/error") -> list[Path]:
    """One PNG per factor: the final `metric` per level as a box (median, quartiles, outliers)
    with the mean marked, finished runs."""
    from zipnet import figures

    runs = df[_status(df) == "finished"] if len(df) else df
    column = f"metrics.{metric}"
    paths = []
    if not len(runs) or column not in runs:
        return paths
    for factor in factors(runs):
        groups = runs[column].groupby(levels(runs, factor), sort=True, observed=True)
        names = [str(level) for level, _ in groups]
        values = [pd.to_numeric(v).dropna().to_numpy() for _, v in groups]
        safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in factor.label)
        paths.append(figures.effect_plot(factor.label, names, values, metric, out / f"effect_{safe}.png"))
    return paths


def study_parents(study: str, experiment: str = tracking.DEFAULT_EXPERIMENT, tracking_uri: str | None = None):
    """The parent runs of studies named `study` (role study), oldest first: one, unless two
    storages held a study of that name."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking.resolve_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id],
        tracking.where(tags={"zipnet.study": study, "zipnet.role": "study"}),
        order_by=["attributes.start_time ASC"],
    )
    return list(runs)


def study_parent(study: str, experiment: str = tracking.DEFAULT_EXPERIMENT, tracking_uri: str | None = None):
    """The parent run of study `study` (role study), or None (the oldest, if there are several)."""
    parents = study_parents(study, experiment, tracking_uri)
    return parents[0] if parents else None


def importances(study: str, storage: str) -> pd.DataFrame:
    """Optuna's parameter importances (fANOVA) for `study` in its storage."""
    import optuna

    from zipnet.tracking import study as views

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = views.importances(optuna.load_study(study_name=study, storage=stores.open_storage(storage)))
    return pd.DataFrame({"param": list(table), "importance": list(table.values())})


def lineage(df: pd.DataFrame, run_id: str, lrs=None) -> pd.DataFrame:
    """A PBT member's lineage (zipnet/sweeps/pbt.py), from its first pass to its last: which run's
    weights trained which passes, and what each copy changed. Walked back from the member through
    the `zipnet.pbt.*` tags: the stretch after its last copy is its own, the passes before it are
    the source's up to that pass, and so on. `lrs(run_id)`: that run's lr per pass, to show the
    schedule followed (MLflow's metric history); None leaves the column out."""
    from zipnet.tracking import lineage as records

    by_id = df.set_index("run_id")
    prefix = "tags."
    rows, run, end = [], run_id, None
    while run in by_id.index:
        tags = {k[len(prefix) :]: v for k, v in by_id.loc[run].items() if k.startswith(prefix) and isinstance(v, str)}
        end = end if end is not None else int(tags.get("zipnet.passes_done", "0") or 0)
        copies = [c for c in records.from_tags(tags) if c[0] < end]
        first = copies[-1][0] + 1 if copies else 1
        row = {"passes": f"{first}-{end}", "run_id": run, "trial": tags.get("zipnet.trial", "")}
        row["from"] = f"a copy of trial {copies[-1][2]} ({copies[-1][3]})" if copies else "its config"
        if lrs is not None:
            per_pass = lrs(run)
            row["lr"] = ", ".join(f"{per_pass[p]:.4g}" for p in range(first, end + 1) if p in per_pass)
        rows.append(row)
        if not copies:
            break
        run, end = copies[-1][1], copies[-1][0]
    return pd.DataFrame(rows[::-1])


def markdown(df: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (no tabulate needed)."""

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def effects_markdown(table: pd.DataFrame, metric: str = "test/error") -> str:
    if table.empty:
        return "(no factor varies between the finished runs)"
    shown = pd.DataFrame(
        {
            "factor": table["factor"],
            "level": table["level"],
            "runs": table["runs"],
            f"mean ± std {metric}": [
                f"{m:.3f} ± {s:.3f}" if not math.isnan(s) else f"{m:.3f}"
                for m, s in zip(table[f"mean {metric}"], table[f"std {metric}"])
            ],
            f"median [q1, q3] {metric}": [
                f"{m:.3f} [{a:.3f}, {b:.3f}]"
                for m, a, b in zip(table[f"median {metric}"], table[f"q1 {metric}"], table[f"q3 {metric}"])
            ],
        }
    )
    return markdown(shown)


# --- paired differences ------------------------------------------------------------------------


class PairingError(ValueError):
    """A factor or pairing key the selected runs cannot be paired by; the message is one line."""


def factor_keys(factor: str) -> list[str]:
    """The config keys of a --paired factor: one key, or several comma-separated that change together
    (a level is then their values together: optim.name,optim.lr)."""
    return [k.strip() for k in factor.split(",") if k.strip()]


def together(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """`keys` and every key that always changes with one of them (SDLM's mu and curvature settings
    with optim.name), which a pair cannot hold equal either."""
    out = list(keys)
    for found in factors(df):
        if set(found.keys) & set(keys):
            out += [k for k in found.keys if k not in out]
    return out


def _check_pairing(df: pd.DataFrame, factor: str, pair_by: tuple[str, ...]) -> None:
    keys, moving = config_keys(df), varying(df)
    shown = ", ".join(moving) or "none"
    named = factor_keys(factor)
    for option, key in (*(("--paired", k) for k in named), *(("--pair-by", k) for k in pair_by)):
        if key not in keys:
            raise PairingError(
                f"{option} {key!r} is not a config key of the selected runs; keys that vary between them: {shown}"
            )
    if not any(k in moving for k in named):
        value = ", ".join(str(df[f"params.{k}"].iloc[0]) for k in named)
        raise PairingError(
            f"--paired {factor!r} has one value ({value}) in every selected run; keys that vary between them: {shown}"
        )
    for key in named:
        if key in pair_by:
            raise PairingError(f"--paired {key!r} is also a --pair-by key; pair by other keys than the factor")


def _level_order(values: list[str]) -> list[str]:
    """Levels in numeric order where every one is a number, else in text order."""
    numeric = pd.to_numeric(pd.Series(values), errors="coerce")
    if numeric.notna().all():
        return [v for _, v in sorted(zip(numeric, values))]
    return sorted(values)


def pairs(df: pd.DataFrame, factor: str, pair_by: tuple[str, ...] = PAIR_BY) -> tuple[dict, int]:
    """The finished runs that share every config key but `factor`, as {(a, b): [(run a, run b), ...]}
    for every two levels a < b, each pair a row of `df`; and the number of finished runs left
    out because another run at their level has the same config (no one-to-one pairing)."""
    _check_pairing(df, factor, pair_by)
    runs = df[_status(df) == "finished"] if len(df) else df
    runs = runs[runs[[f"metrics.{m}" for m in PAIRED if f"metrics.{m}" in runs]].notna().all(axis=1)]
    named = together(df, factor_keys(factor))
    others = [f"params.{k}" for k in config_keys(df) if k not in named]

    def value(row, column: str) -> str:
        return "(not set)" if pd.isna(row[column]) else str(row[column])

    cells: dict[tuple, dict[str, list]] = {}
    for _, row in runs.iterrows():
        rest = tuple(value(row, c) for c in others)
        level = ", ".join(value(row, f"params.{k}") for k in named)
        cells.setdefault(rest, {}).setdefault(level, []).append(row)
    ambiguous = sum(len(v) for cell in cells.values() for v in cell.values() if len(v) > 1)
    order = _level_order(sorted({level for cell in cells.values() for level in cell}))
    out = {}
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            out[(a, b)] = [
                (cell[a][0], cell[b][0])
                for cell in cells.values()
                if len(cell.get(a, ())) == 1 and len(cell.get(b, ())) == 1
            ]
    return out, ambiguous


def _pooled_mcnemar(matched: list[tuple], misses) -> tuple[stats.McNemar | None, int]:
    """McNemar's test over the pairs whose two runs both have per-digit misses on the same test
    digits (equal size and labels), pooled; and how many pairs that is."""
    a_correct, b_correct = [], []
    for run_a, run_b in matched:
        got = misses(run_a["run_id"]), misses(run_b["run_id"])
        if None in got or any(got[0][k] != got[1][k] for k in ("n_test", "labels_sha256")):
            continue
        for into, record in zip((a_correct, b_correct), got):
            correct = np.ones(record["n_test"], dtype=bool)
            correct[np.asarray(record["misses"], dtype=np.int64)] = False
            into.append(correct)
    if not a_correct:
        return None, 0
    return stats.mcnemar(np.concatenate(a_correct), np.concatenate(b_correct)), len(a_correct)


def paired(df: pd.DataFrame, factor: str, pair_by: tuple[str, ...] = PAIR_BY, misses=None) -> pd.DataFrame:
    """One row per two levels a, b of `factor`: the pairs, the mean of b - a in each PAIRED metric
    with its 95% interval (NaN under 2 pairs), and McNemar's test (a_only: digits right under a
    and wrong under b) over the pairs whose runs have per-digit misses. `misses(run_id)` gives
    a run's test_misses.json as a dict, or None; without it there is no McNemar."""
    matched, ambiguous = pairs(df, factor, pair_by)
    named = ",".join(together(df, factor_keys(factor)))  # the keys a level is made of, as pairs() took them
    rows = []
    for (a, b), both in matched.items():
        row = {"factor": named, "a": a, "b": b, "pairs": len(both), "left out": ambiguous}
        for metric in PAIRED:
            values = [[float(run[f"metrics.{metric}"]) for run in side] for side in zip(*both)] if both else [[], []]
            d = stats.paired_difference(values[1], values[0]) if len(both) >= 2 else None
            for stat in ("mean", "low", "high"):
                row[f"{stat} Δ {metric}"] = getattr(d, stat) if d is not None else float("nan")
        test, n = _pooled_mcnemar(both, misses) if misses is not None else (None, 0)
        row.update(
            {
                "mcnemar pairs": n,
                "a only": test.a_only if test else pd.NA,
                "b only": test.b_only if test else pd.NA,
                "mcnemar p": test.p if test else float("nan"),
            }
        )
        rows.append(row)
    columns = ["factor", "a", "b", "pairs", "left out"]
    columns += [f"{stat} Δ {m}" for m in PAIRED for stat in ("mean", "low", "high")]
    out = pd.DataFrame(rows, columns=columns + ["mcnemar pairs", "a only", "b only", "mcnemar p"])
    for col in ("a only", "b only"):
        out[col] = out[col].astype("Int64")
    return out


def run_misses(tracking_uri: str | None):
    """A reader of each run's test_misses.json from the store (None where a run has none); each
    run is read once, however many level pairs it is in."""
    import functools
    import json
    import tempfile

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking.resolve_uri(tracking_uri))

    @functools.cache
    def read(run_id: str) -> dict | None:
        if outputs.MISSES not in {a.path for a in client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory(prefix="zipnet-report-") as folder:
            return json.loads(Path(client.download_artifacts(run_id, outputs.MISSES, folder)).read_text())

    return read


def paired_markdown(table: pd.DataFrame, pair_by: tuple[str, ...]) -> str:
    if table.empty:
        return "(the factor has one level among the finished runs)"

    def interval(row, metric: str, scale: float, fmt: str) -> str:
        mean, low, high = (row[f"{stat} Δ {metric}"] * scale for stat in ("mean", "low", "high"))
        if math.isnan(mean):
            return "too few pairs"
        return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"

    def mcnemar(row) -> str:
        if row["mcnemar pairs"] == 0:
            return "n/a (no test_misses.json)"
        return f"{row['a only']} / {row['b only']}, p = {row['mcnemar p']:.2g} ({row['mcnemar pairs']} pairs)"

    shown = pd.DataFrame(
        {
            "a": table["a"],
            "b": table["b"],
            "pairs": table["pairs"],
            f"{PAIRED['test/error']} [95%]": [interval(r, "test/error", 1.0, "+.2f") for _, r in table.iterrows()],
            f"{PAIRED['test/loss']} ×1e-3 [95%]": [interval(r, "test/loss", 1e3, "+.2f") for _, r in table.iterrows()],
            "McNemar: a only / b only, p": [mcnemar(r) for _, r in table.iterrows()],
        }
    )
    factor = table["factor"].iloc[0]
    head = (
        f"Δ = b - a over runs that share every config key but {factor} (among them {', '.join(pair_by)}); "
        "a only / b only: test digits right only under a / only under b, pooled over the pairs"
    )
    left = int(table["left out"].iloc[0])
    tail = f"\n\n{left} finished runs left out: another run at their level has the same config" if left else ""
    return head + "\n\n" + markdown(shown) + tail


def write(
    df: pd.DataFrame,
    out: Path,
    top: int = 10,
    include_pruned: bool = False,
    by: str = "test/error",
    importance: pd.DataFrame | None = None,
    paired_view: tuple[pd.DataFrame, str] | None = None,
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    board, table, totals = leaderboard(df, top, include_pruned, by), effects(df, by), summary(df)
    tables = {
        "leaderboard": (board, markdown(board)),
        "effects": (table, effects_markdown(table, by)),
        "summary": (totals, markdown(totals)),
    }
    if importance is not None:
        tables["importances"] = (importance, markdown(importance))
    if paired_view is not None:
        tables["paired"] = paired_view
    paths = {}
    for name, (frame, text) in tables.items():
        paths[f"{name}.csv"], paths[f"{name}.md"] = out / f"{name}.csv", out / f"{name}.md"
        frame.to_csv(paths[f"{name}.csv"], index=False)
        paths[f"{name}.md"].write_text(text + "\n")
    for path in effect_plots(df, out, by):
        paths[path.name] = path
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zipnet-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default=tracking.DEFAULT_EXPERIMENT, help="MLflow experiment (default zipnet)")
    parser.add_argument("--study", help="only the trials of this Optuna study")
    parser.add_argument("--parent", help="only the children of this parent run (a multirun or a study)")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this tag")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs whose config has this value, e.g. trainer.passes=80",
    )
    parser.add_argument("--top", type=int, default=10, help="leaderboard length (default 10)")
    parser.add_argument("--include-pruned", action="store_true", help="rank pruned runs too (at their last pass)")
    parser.add_argument(
        "--by",
        default="test/error",
        choices=RANKS,
        help="rank and tabulate effects by this final metric (default test/error)",
    )
    parser.add_argument(
        "--paired",
        metavar="KEY[,KEY...]",
        help="paired differences between the levels of this config key, e.g. model.init, or of several keys "
        "that change together, e.g. optim.name,optim.lr (paired.csv/.md)",
    )
    parser.add_argument(
        "--pair-by",
        default=",".join(PAIR_BY),
        metavar="KEYS",
        help=f"with --paired: the keys a pair shares, comma-separated (default {','.join(PAIR_BY)}); "
        "every other config key but the factor is shared too",
    )
    parser.add_argument("--out", type=Path, help="output folder (default reports/<study or experiment>)")
    parser.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
    )
    args = parser.parse_args(argv)
    tags, params = {}, {}
    for option, items, into in (("--tag", args.tag, tags), ("--param", args.param, params)):
        for item in items:
            if "=" not in item:
                parser.error(f"{option} {item!r}: give KEY=VALUE")
            key, value = item.split("=", 1)
            into[key] = value
    try:
        df = load_runs(args.experiment, args.study, args.parent, tags, args.tracking_uri, params)
    except ValueError as err:  # a value no MLflow filter can hold
        parser.error(str(err))
    if df.empty:
        print("zipnet-report: no runs match", file=sys.stderr)
        sys.exit(1)
    paired_view, pair_by = None, tuple(k.strip() for k in args.pair_by.split(",") if k.strip())
    if args.paired:
        try:
            table = paired(df, args.paired, pair_by, run_misses(args.tracking_uri))
        except PairingError as err:
            print(f"zipnet-report: error: {err}", file=sys.stderr)
            sys.exit(2)
        paired_view = (table, paired_markdown(table, pair_by))
    parent_id, importance = args.parent, None
    if args.study:
        parents = study_parents(args.study, args.experiment, args.tracking_uri)
        if len(parents) > 1 and not args.parent:  # two studies share the name: never merged silently
            where = "; ".join(f"{p.info.run_id} in {p.data.tags.get('zipnet.storage', '?')}" for p in parents)
            print(
                f"zipnet-report: warning: {len(parents)} studies are named {args.study!r} (parent runs: {where}); "
                "their trials are reported together; give --parent RUN_ID to report one",
                file=sys.stderr,
            )
        parent = parents[0] if parents else None
        parent_id = parent.info.run_id if parent is not None else None
        storage = parent.data.tags.get("zipnet.storage") if parent is not None else None
        if storage:
            try:
                importance = importances(args.study, storage)
            except Exception as err:  # too few complete trials, or the storage is gone: the rest stands
                print(f"zipnet-report: no parameter importances: {err}", file=sys.stderr)
    out = args.out or Path("reports") / (args.study or args.experiment)
    paths = write(df, out, args.top, args.include_pruned, args.by, importance, paired_view)
    print(f"## Leaderboard: top {args.top} of {len(df)} runs by final {args.by}\n")
    print(paths["leaderboard.md"].read_text())
    print(f"## Effects: final {args.by} per level of each factor, finished runs\n")
    print(paths["effects.md"].read_text())
    print("## Summary: over the finished runs\n")
    print(paths["summary.md"].read_text())
    if importance is not None:
        print("## Parameter importances (Optuna, fANOVA)\n")
        print(paths["importances.md"].read_text())
    if paired_view is not None:
        print(f"## Paired differences: {args.paired}, finished runs\n")
        print(paths["paired.md"].read_text())
    if any(col.startswith("tags.zipnet.pbt.") for col in df.columns):
        board = leaderboard(df, 1, False, args.by)
        if len(board):
            best = board["run_id"][0]
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=tracking.resolve_uri(args.tracking_uri))
            found = lineage(df, best, lambda run: {m.step: m.value for m in client.get_metric_history(run, "lr")})
            paths["lineage.csv"], paths["lineage.md"] = out / "lineage.csv", out / "lineage.md"
            found.to_csv(paths["lineage.csv"], index=False)
            paths["lineage.md"].write_text(markdown(found) + "\n")
            print(f"## Lineage of the best member (PBT): run {best}\n")
            print(paths["lineage.md"].read_text())
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    if parent_id:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking.resolve_uri(args.tracking_uri))
        for path in paths.values():
            client.log_artifact(parent_id, str(path), "report")
        print(f"logged to the parent run {parent_id} under report/")


if __name__ == "__main__":
    main()
