"""The training loop: K configurations of the 1989 net trained in lockstep, pass by pass.

"The network was trained ... the weights were updated after each pattern presentation", in a
constant order, for 23 passes; train and test are evaluated after every pass. Every member
reads its own example stream (its own dataset), with the same number of steps per pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from zipnet import paper
from zipnet.engine import kernel
from zipnet.engine.backend import Backend, Prepared, Scores, backend_for
from zipnet.engine.checkpoint import Checkpoint, fingerprint, member_config, shared_config
from zipnet.engine.members import Copy, Member, RunResult
from zipnet.engine.population import Population
from zipnet.engine.streams import Streams, hessian_sample, pass_digits
from zipnet.errors import ConfigError
from zipnet.metrics import SPLITS

PassHook = Callable[[int, list[RunResult]], set[int]]
ExploitHook = Callable[[int, list[RunResult]], list[Copy]]
CheckpointHook = Callable[[Checkpoint, list[int]], None]


def train(
    members: list[Member],
    digits,
    passes: int = 23,
    device: str = "cpu",
    log: Callable[[str], None] | None = print,
    on_pass: PassHook | None = None,
    progress=None,
    backend: str = "auto",
    threads: int = 0,
    shift: int = 0,
    shift_seed: int = 0,
    start: Checkpoint | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: CheckpointHook | None = None,
    exploit: ExploitHook | None = None,
) -> list[RunResult]:
    """Train members in lockstep and return one RunResult each, in the order given.

    `digits`: one dataset for all members, or a list with one per member (all with the same
    numbers of train and test digits); a member reads only its own. `on_pass(pass_number,
    live_results)` runs after each pass's evaluation and may return the positions (in
    `members`) of results to stop as pruned. A member whose loss turns NaN or inf is stopped
    as diverged, with its pass number; the others go on undisturbed. `backend`: "torch"
    (torch ops), "c" (the compiled CPU kernel), or "auto" (the kernel wherever it applies).
    `shift`: each training pattern moved by up to that many pixels per pass (the modern
    recipe), drawn from `shift_seed` and the pass.

    `start`: a checkpoint of these members (in order) to go on from; the results then hold its
    passes too. `on_checkpoint(checkpoint, positions)` gets the live members' state (their
    positions in `members`) every `checkpoint_every` passes and after the last one.

    `exploit(pass_number, live_results)` (population-based training) runs at every pass boundary
    but the last, after pruning, and may return Copy's: each target member takes its source's
    weights and optimiser state and goes on with the copy's settings. Each copy, with the target's
    checkpoint just after it (`Copy.state`), joins the target's `RunResult.copies`.
    """
    dev = torch.device(device)
    streams = Streams.of(digits, len(members))
    configs, shared, prints = [], {}, []  # what a checkpoint is written for: needed only to read or write one
    if start is not None or on_checkpoint is not None or exploit is not None:
        prints = [fingerprint(d) for d in streams.datasets]
        configs = [member_config(m, prints[d]) for m, d in zip(members, streams.index)]
        shared = shared_config(members, passes, shift, shift_seed)
    pop = Population(members, dev)
    first = 0  # the passes already done
    if start is not None:
        start.check(configs, shared)
        if start.passes_done > passes:
            raise ConfigError(
                "trainer.passes",
                f"{passes} is fewer than the {start.passes_done} passes done in {start.source or 'the checkpoint'}",
            )
        start.load_into(pop)
        first = start.passes_done
    ops = backend_for(pop, backend, threads)
    results = [RunResult(member=m, backend=ops.name, kernel_build=ops.build, cpu=kernel.cpu_model()) for m in members]
    if start is not None:
        start.fill(results)
    active = list(range(len(members)))  # positions in `results` of the population's members
    splits = {split: streams.split(split, dev) for split in SPLITS}
    sizes = {split: y.shape[1] for split, (_, y) in splits.items()}
    prepared = None  # the training pass as the backend reads it; made once, or per pass when shifted
    with torch.no_grad():
        for pass_index in range(first, passes):
            pass_number = pass_index + 1
            lrs = pop.optim.start_pass(pass_index, passes)
            started = time.perf_counter()
            if shift or prepared is None:
                x, labels = splits["train"]
                prepared = ops.prepare(pass_digits(x, shift, shift_seed, pass_index), labels)
            pop.draw_dropout(sizes["train"], pass_index)
            _curvature(pop, ops, prepared, streams.index, sizes["train"], pass_index)
            ops.train_pass(prepared, streams.index)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            evaluated = ops.evaluate([splits[split] for split in SPLITS], streams.index, outputs=(False, True))
            timing = {"seconds": seconds, "eval_seconds": time.perf_counter() - started}
            scores = dict(zip(SPLITS, evaluated))  # the outputs of the test split only
            rows = _rows(pass_number, scores, sizes, lrs, timing, pop.cross_entropy)
            gone = _record(results, active, rows, scores["test"][2], pop.finite().tolist())
            if log is not None:
                for pos in active:
                    log(format_pass(results[pos], prefix=f"member {pos}: " if len(members) > 1 else ""))
            if on_pass is not None:
                _prune(on_pass, pass_number, results, active, gone)
            for k in gone:
                results[active[k]].params = pop.member_params(k)
            if progress is not None:
                progress.update(pass_number)
            if gone:
                keep = [k for k in range(len(active)) if k not in gone]
                active = [active[k] for k in keep]
                if not active:
                    break
                pop.keep(keep)
                streams.keep(keep)
            if exploit is not None and pass_number < passes:
                _exploit(exploit, pass_number, pop, results, active, configs, shared, prints, streams.index)
            if (
                on_checkpoint is not None
                and checkpoint_every
                and (pass_number % checkpoint_every == 0 or pass_number == passes)
            ):
                live = [results[pos] for pos in active]
                state = Checkpoint.of(pop, live, [configs[pos] for pos in active], shared, pass_number)
                on_checkpoint(state, list(active))
    for k, pos in enumerate(active):
        results[pos].status = "finished"
        results[pos].params = pop.member_params(k)
    return results


def _exploit(
    exploit: ExploitHook,
    pass_number: int,
    pop: Population,
    results: list[RunResult],
    active: list[int],
    configs: list[dict],
    shared: dict,
    prints: list[str],
    member_index: list[int],
) -> None:
    """The hook's copies, in the order given: a copy reads its source as it is at that moment."""
    for copy in exploit(pass_number, [results[pos] for pos in active]) or ():
        k = active.index(copy.target)
        pop.copy_member(k, active.index(copy.source), copy.member)
        configs[copy.target] = member_config(copy.member, prints[member_index[k]])
        target = results[copy.target]
        copy.pass_number = pass_number
        copy.state = Checkpoint.of(pop, [target], [configs[copy.target]], shared, pass_number, places=[k])
        target.copies.append(copy)


def _curvature(
    pop: Population, ops: Backend, prepared: Prepared, member_index: list[int], n: int, pass_index: int
) -> None:
    """SDLM: "before each pass, estimate h over a few hundred patterns" (LeNet-5) of the pass's n, each
    member on its own dataset at the same places; in "running" mode only before the first pass, then
    per pattern."""
    mode = pop.optim.curvature
    if not (mode == "pass" or (mode == "running" and pass_index == 0)):
        return
    sample = hessian_sample(n, pop.optim.samples, pass_index)
    pop.optim.set_curvature(ops.sample_curvature(prepared, member_index, sample))


def _rows(
    pass_number: int,
    scores: dict[str, Scores],
    sizes: dict[str, int],
    lrs: list[float],
    timing: dict[str, float],
    cross_entropy: bool,
) -> list[dict[str, float]]:
    """Each member's metric row for the pass: per split its loss, misses and error in %, then its lr
    and the pass's wall times."""
    per_split = {split: (loss.tolist(), misses.tolist()) for split, (loss, misses, _) in scores.items()}
    rows = []
    for k, lr in enumerate(lrs):
        row: dict[str, float] = {"pass": pass_number}
        for split, (loss, misses) in per_split.items():
            row[f"{split}/loss"] = float(loss[k])
            row[f"{split}/misses"] = int(misses[k])
            row[f"{split}/error"] = 100.0 * int(misses[k]) / sizes[split]
        row["lr"] = lr
        row.update(timing)
        if not cross_entropy:  # the paper's figures are MSEs: no gap for a cross-entropy run
            row[paper.GAP] = paper.gap(row, sizes["train"], sizes["test"])
        rows.append(row)
    return rows


def _record(
    results: list[RunResult],
    active: list[int],
    rows: list[dict[str, float]],
    test_outputs: torch.Tensor,
    finite: list[bool],
) -> list[int]:
    """Each member's row into its result; returns the places (in the population) of those that diverged."""
    diverged = []
    for k, (pos, row) in enumerate(zip(active, rows)):
        result = results[pos]
        result.history.append(row)
        result.population_sizes.append(len(active))
        result.population_positions.append(k)
        result.test_outputs = test_outputs[k].cpu()
        if not (finite[k] and math.isfinite(row["train/loss"]) and math.isfinite(row["test/loss"])):
            result.status, result.diverged_at_pass = "diverged", row["pass"]
            diverged.append(k)
    return diverged


def _prune(on_pass: PassHook, pass_number: int, results: list[RunResult], active: list[int], gone: list[int]) -> None:
    """The hook sees the live members' results; those it names stop as pruned (their places join `gone`)."""
    live = [results[pos] for k, pos in enumerate(active) if k not in gone]
    for pos in on_pass(pass_number, live) or ():
        k = active.index(pos)
        if k not in gone:
            results[pos].status = "pruned"
            gone.append(k)


def format_pass(result: RunResult, prefix: str = "") -> str:
    """The seed's per-pass lines: `eval: split train. loss 4.07e-03. error 0.62%. misses: 45`."""
    row = result.history[-1]
    lines = [f"{prefix}pass {row['pass']}"]
    for split in SPLITS:
        lines.append(
            f"{prefix}eval: split {split:5s}. loss {row[f'{split}/loss']:.2e}. "
            f"error {row[f'{split}/error']:.2f}%. misses: {row[f'{split}/misses']}"
        )
    if result.status == "diverged":
        lines.append(f"{prefix}diverged at pass {result.diverged_at_pass}: the loss or the weights are not finite")
    return "\n".join(lines)
