"""zipnet-report: a leaderboard and per-factor effect tables from the MLflow store.

    zipnet-report                                  every run in experiment `zipnet`
    zipnet-report --study paper_open_choices       one Optuna study's trials
    zipnet-report --parent RUN_ID --top 20         one multirun's jobs
    zipnet-report --tag zipnet.git_commit=abc123   any tag filter (repeatable)

Reads the runs with `mlflow.search_runs` (a pandas DataFrame; a run's metric there is its
last logged value, i.e. the final pass), prints the tables, and writes leaderboard.csv,
leaderboard.md, effects.csv and effects.md to --out (default reports/<study|experiment>).

The leaderboard ranks finished runs by final test error (pruned ones too with
--include-pruned); where runs carry it, a column gives the % of test digits rejected for
1% error on the rest (the paper's 12.1%). The effect table has, for every factor that
varies between those runs, the mean ± std of the final test error per level; a numeric
factor with many values (a log-scaled lr) is cut into quartiles.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from zipnet import paper, tracking

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


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def filter_string(
    study: str | None = None,
    parent: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> str:
    parts = [f"tags.`zipnet.role` != {_quote(role)}" for role in PARENT_ROLES]
    if study:
        parts.append(f"tags.`zipnet.study` = {_quote(study)}")
    if parent:
        parts.append(f"tags.mlflow.parentRunId = {_quote(parent)}")
    for key, value in (tags or {}).items():
        parts.append(f"tags.`{key}` = {_quote(value)}")
    for key, value in (params or {}).items():
        parts.append(f"params.`{key}` = {_quote(value)}")
    return " and ".join(parts)


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


def factors(df: pd.DataFrame) -> list[str]:
    """Config keys (params) whose value differs between the runs."""
    out = []
    for col in df.columns:
        if not col.startswith("params."):
            continue
        key = col[len("params.") :]
        if key.startswith(tracking.NOT_TRAINING) or key.startswith("sweep."):
            continue
        if df[col].nunique(dropna=False) > 1:
            out.append(key)
    return sorted(out)


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


def effects(df: pd.DataFrame, metric: str = "test/error") -> pd.DataFrame:
    """Mean ± std of the final `metric` per level of every swept factor (finished runs)."""
    runs = df[_status(df) == "finished"] if len(df) else df
    column = f"metrics.{metric}"
    rows = []
    if len(runs) and column in runs:
        for key in factors(runs):
            levels = _levels(runs[f"params.{key}"])
            for level, values in runs[column].groupby(levels, sort=True, observed=True):
                rows.append(
                    {
                        "factor": key,
                        "level": level,
                        "runs": int(values.count()),
                        f"mean {metric}": float(values.mean()),
                        f"std {metric}": float(values.std()) if values.count() > 1 else float("nan"),
                    }
                )
    return pd.DataFrame(rows, columns=["factor", "level", "runs", f"mean {metric}", f"std {metric}"])


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over the selected finished runs of each final figure (e.g. a config over seeds)."""
    runs = df[_status(df) == "finished"] if len(df) else df
    rows = []
    for metric in SUMMARY:
        values = pd.to_numeric(runs[f"metrics.{metric}"]) if f"metrics.{metric}" in runs else pd.Series(dtype=float)
        if values.count():
            rows.append(
                {
                    "metric": metric,
                    "runs": int(values.count()),
                    "mean": float(values.mean()),
                    "std": float(values.std()) if values.count() > 1 else float("nan"),
                    "min": float(values.min()),
                    "max": float(values.max()),
                }
            )
    return pd.DataFrame(rows, columns=["metric", "runs", "mean", "std", "min", "max"])


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
            metric: [
                f"{m:.3f} ± {s:.3f}" if not math.isnan(s) else f"{m:.3f}"
                for m, s in zip(table[f"mean {metric}"], table[f"std {metric}"])
            ],
        }
    )
    return markdown(shown)


def write(
    df: pd.DataFrame, out: Path, top: int = 10, include_pruned: bool = False, by: str = "test/error"
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    board, table, totals = leaderboard(df, top, include_pruned, by), effects(df, by), summary(df)
    paths = {
        "leaderboard.csv": out / "leaderboard.csv",
        "leaderboard.md": out / "leaderboard.md",
        "effects.csv": out / "effects.csv",
        "effects.md": out / "effects.md",
        "summary.csv": out / "summary.csv",
        "summary.md": out / "summary.md",
    }
    totals.to_csv(paths["summary.csv"], index=False)
    paths["summary.md"].write_text(markdown(totals) + "\n")
    board.to_csv(paths["leaderboard.csv"], index=False)
    paths["leaderboard.md"].write_text(markdown(board) + "\n")
    table.to_csv(paths["effects.csv"], index=False)
    paths["effects.md"].write_text(effects_markdown(table, by) + "\n")
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
    df = load_runs(args.experiment, args.study, args.parent, tags, args.tracking_uri, params)
    if df.empty:
        print("zipnet-report: no runs match", file=sys.stderr)
        sys.exit(1)
    out = args.out or Path("reports") / (args.study or args.experiment)
    paths = write(df, out, args.top, args.include_pruned, args.by)
    print(f"## Leaderboard: top {args.top} of {len(df)} runs by final {args.by}\n")
    print(paths["leaderboard.md"].read_text())
    print(f"## Effects: final {args.by} per level of each factor, finished runs\n")
    print(paths["effects.md"].read_text())
    print("## Summary: mean ± std over the finished runs\n")
    print(paths["summary.md"].read_text())
    print(f"written: {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
