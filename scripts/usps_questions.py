"""The paper's open questions on the real USPS digits, each answered over seeds (docs/usps_questions.md).

    .venv/bin/python scripts/usps_questions.py ../shared/data/usps.h5 [--seeds 20] [--gap-seeds 50]
    .venv/bin/python scripts/usps_questions.py ../shared/data/usps.h5 --data embedded   # part 1 on MNIST

1. Each open question at the best 8-of-12 settings found so far (docs/usps_study.md's sgd_random),
   one key changed at a time, every level trained with the same seeds: the difference from the
   base in final test error and test MSE, with a 95% t interval over the seeds, and McNemar's
   exact test on the per-digit errors (pooled over the seed pairs).
2. The test-error gap: the three configurations with the lowest test error in that study, over
   --gap-seeds seeds each: where the paper's 102 misses falls, the minimum over passes (the paper
   watched the test set every pass) and the expected best of N seeds.
3. The ink: slant (mu11 / mu02) and bounding box of usps.h5's digits and the embedded MNIST sample.

Every member trains through zipnet.runner, so levels that may share a population train in
lockstep. Finished members are kept in OUT/members_DATA.jsonl and a rerun trains only what is
missing. The tables go to stdout and to OUT/DATA_questions.md. On usps.h5 data.seed draws
nothing (the original split, in file order); with --data embedded each seed also draws its own
sample (data.seed = seed), so levels are paired by both, and the gap part is skipped (the
paper's 102 misses are on USPS).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from zipnet import config, ink, rejection, runner, stats
from zipnet.engine import kernel
from zipnet.session import Clock

PAPER_MISSES = 102  # "5.0% on the test set (102 mistakes)"
N_TEST = 2007
LR = 0.043393123533587284  # sgd_random's rate
# sgd_random: the best 8-of-12 configuration of docs/usps_study.md by paper/gap
BASE = [
    "model.init=linear",
    "data.target_negative=-0.6",
    "data.target_positive=0.6",
    "loss.mse=half_sum",
    "model.table=random",
    f"optim.lr={LR}",
]
SDLM = ["optim=sdlm", "optim.lr=0.0013852094372840487", "optim.mu=0.1283953674493923"]  # sdlm_random's eta, mu
PM08 = ["data.target_negative=-0.8", "data.target_positive=0.8"]

# question -> levels (name, overrides over BASE); the first level of each is BASE itself
QUESTIONS = {
    "H1->H2 table": [
        ("random (8 of 12)", []),
        ("block (8 of 12)", ["model.table=block"]),
        ("full", ["model.table=full"]),
    ],
    "MSE scaling": [("half_sum", []), ("mean", ["loss.mse=mean"]), ("sum", ["loss.mse=sum"])],
    "learning rate": [
        ("0.043", []),
        ("0.022", [f"optim.lr={LR / 2}"]),
        ("0.087", [f"optim.lr={LR * 2}"]),
        ("0.043 falling to 0.0043", [f"optim.lr_end={LR / 10}"]),
        ("0.022 falling to 0.0022", [f"optim.lr={LR / 2}", f"optim.lr_end={LR / 20}"]),
    ],
    "init": [("2.4/F", []), ("2.4/sqrt(F)", ["model.init=sqrt"])],
    "targets": [
        ("±0.6", []),
        ("±0.8", PM08),
        ("±1", ["data.target_negative=-1.0", "data.target_positive=1.0"]),
    ],
    "output squashing": [
        ("tanh", []),
        ("1.7159 tanh(2a/3)", ["model.activation=scaled_tanh"]),
        ("1.7159 tanh(2a/3), lr 0.011", ["model.activation=scaled_tanh", f"optim.lr={LR / 4}"]),
        ("linear outputs", ["model.output=linear"]),
    ],
    "SGD or SDLM": [
        ("SGD 0.043", []),
        ("SDLM eta 1.4e-3, mu 0.13", SDLM),
        ("SDLM as tuned (±0.8)", SDLM + PM08),
    ],
}

# the three lowest test errors of docs/usps_study.md (5 seeds each), as scripts/usps_study.sh runs them
GAP_CONFIGS = {
    "sgd_full": [
        "model.init=linear",
        *PM08,
        "loss.mse=mean",
        "model.table=full",
        "optim.lr=0.05971597711178781",
    ],
    "sdlm_random": ["model.init=linear", "loss.mse=half_sum", "model.table=random", *SDLM, *PM08],
    "sdlm_full": [
        "optim=sdlm",
        "model.init=sqrt",
        *PM08,
        "loss.mse=half_sum",
        "model.table=full",
        "optim.lr=0.0006948608894272316",
        "optim.mu=0.04044812636651483",
    ],
}
BEST_OF = (1, 5, 20)
# head to head, paired by seed, neither side the base: (name, a, b), each a level above
HEAD_TO_HEAD = [
    ("SDLM against SGD 0.022 falling to 0.0022", SDLM, [f"optim.lr={LR / 2}", f"optim.lr_end={LR / 20}"]),
    (
        "scaled tanh at lr 0.011 against tanh at 0.022",
        ["model.activation=scaled_tanh", f"optim.lr={LR / 4}"],
        [f"optim.lr={LR / 2}"],
    ),
]


def merged(overrides: list[str]) -> list[str]:
    """BASE with `overrides` applied: a later value of a key replaces the earlier one."""
    keyed: dict[str, str] = {}
    for o in BASE + overrides:
        keyed[config.override_key(o)] = o
    return sorted(keyed.values())


def member_key(overrides: list[str], passes: int, seed: int) -> str:
    return json.dumps([sorted(overrides), passes, seed])


class Store:
    """Finished members, one JSON line each, keyed by their overrides, passes and seed."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                self.rows[row["key"]] = row

    def add(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for row in rows:
                self.rows[row["key"]] = row
                f.write(json.dumps(row) + "\n")

    def get(self, overrides: list[str], passes: int, seeds: range) -> list[dict]:
        return [self.rows[member_key(overrides, passes, s)] for s in seeds]


def train(store: Store, wanted: list[list[str]], seeds: range, data: list[str], passes: int, sample: bool) -> float:
    """Train every (overrides, seed) not yet in the store, all in one runner.run; returns its wall seconds."""
    jobs, keys = [], []
    with config.Composer() as composer:
        for overrides in wanted:
            todo = [s for s in seeds if member_key(overrides, passes, s) not in store.rows]
            if not todo:
                continue
            cfg = composer.compose(data + overrides + [f"trainer.passes={passes}", "trainer.progress=off"])
            for s in todo:
                job_cfg = copy.deepcopy(cfg)
                OmegaConf.update(job_cfg, "seed", s)
                if sample:  # the embedded digits: each seed its own draw; usps.h5 keeps its original split
                    OmegaConf.update(job_cfg, "data.seed", s)
                jobs.append(runner.Job(cfg=job_cfg, name=f"seed={s} " + " ".join(overrides)))
                keys.append(member_key(overrides, passes, s))
    if not jobs:
        return 0.0
    print(f"training {len(jobs)} members", flush=True)
    started = time.perf_counter()
    runner.run(jobs, log=print, clock=Clock())
    seconds = time.perf_counter() - started
    store.add([record(job, key) for job, key in zip(jobs, keys)])
    return seconds


def record(job: runner.Job, key: str) -> dict:
    """What the tables need of a member: final figures, minimum over passes, per-digit correctness."""
    result = job.result
    row = {"key": key, "seed": int(job.cfg.seed), "status": result.status if result else "failed"}
    if result is None or result.status != "finished":
        return row
    last = result.history[-1]
    outputs, labels = result.test_outputs.numpy(), job.digits.test_y.numpy()
    correct = outputs.argmax(axis=1) == labels
    assert int((~correct).sum()) == last["test/misses"], "outputs and misses disagree"
    per_pass = [h["test/misses"] for h in result.history]
    row.update(
        test_misses=int(last["test/misses"]),
        test_mse=float(last["test/loss"]),
        train_misses=int(last["train/misses"]),
        train_mse=float(last["train/loss"]),
        min_test_misses=int(min(per_pass)),
        min_pass=int(np.argmin(per_pass)) + 1,
        reject=rejection.reject_rate_at(outputs, labels),
        correct="".join("1" if c else "0" for c in correct),
    )
    return row


# --- tables ------------------------------------------------------------------------------------


def pct(misses) -> np.ndarray:
    return 100.0 * np.asarray(misses, dtype=float) / N_TEST


def interval(d: stats.Difference, fmt: str) -> str:
    return f"{d.mean:{fmt}} [{d.low:{fmt}}, {d.high:{fmt}}]"


def verdict(d: stats.Difference) -> str:
    if not d.decided:
        return "noise"
    return "higher" if d.mean > 0 else "lower"


def question_tables(store: Store, passes: int, seeds: range) -> list[str]:
    out = [
        "| question | level | runs | test error % | test MSE | Δ error, points [95%] | Δ MSE ×1e-3 [95%] "
        "| McNemar: base only / level only, p | error | MSE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = store.get(merged([]), passes, seeds)
    for question, levels in QUESTIONS.items():
        for n, (name, overrides) in enumerate(levels):
            rows = store.get(merged(overrides), passes, seeds)
            ok = [k for k in range(len(seeds)) if rows[k]["status"] == "finished" and base[k]["status"] == "finished"]
            label = question if n == 0 else ""
            runs = f"{len(ok)}/{len(seeds)}"
            if len(ok) < 2:
                out.append(f"| {label} | {name} | {runs} | | | too few finished runs | | | | |")
                continue
            err = pct([rows[k]["test_misses"] for k in ok])
            mse = np.array([rows[k]["test_mse"] for k in ok])
            cells = f"| {label} | {name} | {runs} | {err.mean():.2f} ± {err.std(ddof=1):.2f} | {mse.mean():.2e} |"
            if n == 0:
                out.append(cells + " (base) | | | | |")
                continue
            d_err = stats.paired_difference(err, pct([base[k]["test_misses"] for k in ok]))
            d_mse = stats.paired_difference(1e3 * mse, [1e3 * base[k]["test_mse"] for k in ok])
            test = stats.mcnemar(correctness(base, ok), correctness(rows, ok))
            out.append(
                f"{cells} {interval(d_err, '+.2f')} | {interval(d_mse, '+.2f')} "
                f"| {test.a_only} / {test.b_only}, p = {test.p:.2g} | {verdict(d_err)} | {verdict(d_mse)} |"
            )
    return out


def head_to_head(store: Store, passes: int, seeds: range) -> list[str]:
    out = [
        "| comparison | runs | Δ error, points [95%] | Δ MSE ×1e-3 [95%] | McNemar: b only / a only, p | error | MSE |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a_over, b_over in HEAD_TO_HEAD:
        a, b = store.get(merged(a_over), passes, seeds), store.get(merged(b_over), passes, seeds)
        ok = [k for k in range(len(seeds)) if a[k]["status"] == "finished" and b[k]["status"] == "finished"]
        if len(ok) < 2:
            out.append(f"| {name} | {len(ok)}/{len(seeds)} | too few finished runs | | | | |")
            continue
        d_err = stats.paired_difference(pct([a[k]["test_misses"] for k in ok]), pct([b[k]["test_misses"] for k in ok]))
        d_mse = stats.paired_difference([1e3 * a[k]["test_mse"] for k in ok], [1e3 * b[k]["test_mse"] for k in ok])
        test = stats.mcnemar(correctness(b, ok), correctness(a, ok))
        out.append(
            f"| {name} | {len(ok)}/{len(seeds)} | {interval(d_err, '+.2f')} | {interval(d_mse, '+.2f')} "
            f"| {test.a_only} / {test.b_only}, p = {test.p:.2g} | {verdict(d_err)} | {verdict(d_mse)} |"
        )
    return out


def correctness(rows: list[dict], ok: list[int]) -> np.ndarray:
    return np.array([[c == "1" for c in rows[k]["correct"]] for k in ok])


def gap_tables(store: Store, passes: int, seeds: range) -> list[str]:
    out = [
        "| configuration | runs | final misses: mean ± sd | min-max | 5% / 50% / 95% | 102 at percentile "
        "| runs ≤ 102 | min over passes: mean ± sd | min | rejected for 1% |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    best = [
        "| configuration | " + " | ".join(f"best of {n}: final / min over passes" for n in BEST_OF) + " |",
        "|---|" + "---|" * len(BEST_OF),
    ]
    pooled_final, pooled_min = [], []
    for name, overrides in GAP_CONFIGS.items():
        rows = [r for r in store.get(sorted(overrides), passes, seeds) if r["status"] == "finished"]
        final = np.array([r["test_misses"] for r in rows])
        lowest = np.array([r["min_test_misses"] for r in rows])
        reject = np.array([r["reject"] for r in rows])
        pooled_final += final.tolist()
        pooled_min += lowest.tolist()
        q = np.percentile(final, [5, 50, 95])
        out.append(
            f"| {name} | {len(rows)}/{len(seeds)} | {final.mean():.1f} ± {final.std(ddof=1):.1f} "
            f"| {final.min()}-{final.max()} | {q[0]:.0f} / {q[1]:.0f} / {q[2]:.0f} "
            f"| {stats.percentile_of(PAPER_MISSES, final):.0f} | {(final <= PAPER_MISSES).sum()} "
            f"| {lowest.mean():.1f} ± {lowest.std(ddof=1):.1f} | {lowest.min()} "
            f"| {reject.mean():.1f} ± {reject.std(ddof=1):.1f}% |"
        )
        best.append(f"| {name} | " + " | ".join(best_cells(final, lowest, n) for n in BEST_OF) + " |")
    best.append(
        "| all three pooled | "
        + " | ".join(best_cells(np.array(pooled_final), np.array(pooled_min), n) for n in BEST_OF)
        + " |"
    )
    return out + [""] + best


def best_cells(final: np.ndarray, lowest: np.ndarray, n: int) -> str:
    if n > len(final):
        return "n/a"
    return f"{stats.best_of_n(final, n):.1f} / {stats.best_of_n(lowest, n):.1f}"


def ink_table(data: list[str]) -> list[str]:
    from zipnet.data import load_digits

    out = [
        "| digits | n | slant: mean ± sd | median abs slant | abs slant < 0.05 | width | height "
        "| width / height | height 16 | width 16 | a side of 16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with config.Composer() as composer:
        usps = load_digits(composer.compose(data).data)
        embedded = load_digits(composer.compose(["data.cache_dir=null"]).data)
    for name, x in (
        ("usps.h5 train", usps.train_x),
        ("usps.h5 test", usps.test_x),
        ("embedded MNIST train", embedded.train_x),
        ("embedded MNIST test", embedded.test_x),
    ):
        images = x.numpy()[:, 0]
        s = ink.slant(images)
        w, h = ink.box(images)
        share = lambda m: f"{100 * np.mean(m):.1f}%"  # noqa: E731
        out.append(
            f"| {name} | {len(s)} | {s.mean():+.3f} ± {s.std(ddof=1):.3f} | {np.median(np.abs(s)):.3f} "
            f"| {share(np.abs(s) < 0.05)} | {w.mean():.1f} | {h.mean():.1f} | {np.mean(w / h):.2f} "
            f"| {share(h == 16)} | {share(w == 16)} | {share((h == 16) | (w == 16))} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("usps", help="usps.h5 (or the LIBSVM / ESL files, as data.path reads them)")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per level of each question")
    parser.add_argument("--gap-seeds", type=int, default=50, help="seeds per configuration of the gap")
    parser.add_argument("--passes", type=int, default=23)
    parser.add_argument("--out", type=Path, default=Path("reports/usps_questions"))
    parser.add_argument("--data", choices=("usps", "embedded"), default="usps", help="what part 1 trains on")
    args = parser.parse_args()
    for key in ("seeds", "gap_seeds", "passes"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')}: {getattr(args, key)} is not allowed; give 1 or more")
    usps = ["data=usps", f"data.path={Path(args.usps).resolve()}", "data.cache_dir=null"]
    data = usps if args.data == "usps" else ["data=embedded", "data.cache_dir=null"]
    store = Store(args.out / f"members_{args.data}.jsonl")
    started = time.perf_counter()
    seeds, gap_seeds = range(args.seeds), range(args.gap_seeds)
    levels = {tuple(merged(o)) for levels in QUESTIONS.values() for _, o in levels}
    sample = args.data == "embedded"
    t_questions = train(store, [list(o) for o in sorted(levels)], seeds, data, args.passes, sample)
    t_gap = 0.0
    if args.data == "usps":
        t_gap = train(store, [sorted(o) for o in GAP_CONFIGS.values()], gap_seeds, data, args.passes, sample)
    pairing = "seed and data.seed (= seed)" if sample else "seed (data.seed: the original split)"
    lines = [
        f"machine: {kernel.cpu_model()}, {os.cpu_count()} cores; data {args.data}; passes {args.passes}; "
        f"{args.seeds} seeds per question level" + (f", {args.gap_seeds} per gap configuration" if not sample else ""),
        f"training wall time this invocation: questions {t_questions:.0f} s, gap {t_gap:.0f} s",
        "",
        f"base: {' '.join(BASE)}",
        "",
        f"## The open questions on {args.data} (Δ = level - base, paired by {pairing})",
        "",
        *question_tables(store, args.passes, seeds),
        "",
        "Head to head (Δ = a - b, paired by seed):",
        "",
        *head_to_head(store, args.passes, seeds),
        "",
    ]
    if not sample:
        lines += [
            f"## The test-error gap (the paper: {PAPER_MISSES} misses; binomial SE at 5% on {N_TEST}: "
            f"{N_TEST * stats.binomial_se(0.05, N_TEST):.1f} misses)",
            "",
            *gap_tables(store, args.passes, gap_seeds),
            "",
        ]
    lines += ["## The ink", "", *ink_table(usps)]
    lines.insert(2, f"total wall time this invocation: {time.perf_counter() - started:.0f} s")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.data}_questions.md").write_text(text)


if __name__ == "__main__":
    main()
