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
RefillHook = Callable[[int, int, list[RunResult]], list[tuple[Member, object]]]


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
    refill: RefillHook | None = None,
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

    `refill(pass_number, free, left)` (asynchronous successive halving) runs at every pass boundary
    where members left (`left`: their results, pruned, diverged or finished, final now) or fewer than
    len(members) train on: it may return up to `free` (member, digits) pairs, which join at pass 1
    with their own first weights and fresh optimiser state. Their results follow the given
    members' (positions len(members) on), and every member keeps its own pass index: its lr
    schedule, shifted digits, dropout masks and curvature sample are those of its single run.
    `on_pass`'s pass number is then the highest of the pass's members (each row has its own).
    """
    if refill is not None and exploit is not None:
        raise ConfigError("scheduler", "population-based training copies members at one pass; it cannot refill")
    dev = torch.device(device)
    streams = Streams.of(digits, len(members))
    lanes = len(members)  # what a refill fills up to
    configs, shared, prints = [], {}, []  # what a checkpoint is written for: needed only to read or write one
    keeps = start is not None or on_checkpoint is not None or exploit is not None
    if keeps:
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
    done = [first] * len(members)  # per place in the population: the passes it has trained
    splits, sizes, made = {}, {}, None  # every dataset's splits, stacked: made again when datasets join
    prepared, prepared_for = None, None  # the training pass as the backend reads it, and for which pairs
    with torch.no_grad():
        while active and min(done) < passes:
            if made != len(streams.datasets):
                splits = {split: streams.split(split, dev) for split in SPLITS}
                sizes = {split: y.shape[1] for split, (_, y) in splits.items()}
                made, prepared_for = len(streams.datasets), None
            lrs = pop.optim.start_pass(list(done), passes)
            started = time.perf_counter()
            pairs = sorted({(d, p) for d, p in zip(streams.index, done)}) if shift else None
            if prepared_for is None or (shift and pairs != prepared_for):
                x, labels = splits["train"]
                if shift:
                    x, labels = pass_digits(x, shift, shift_seed, pairs), labels[[d for d, _ in pairs]]
                prepared, prepared_for = ops.prepare(x, labels), pairs or []
            reads = [pairs.index(pair) for pair in zip(streams.index, done)] if shift else streams.index
            pop.draw_dropout(sizes["train"], list(done))
            _curvature(pop, ops, prepared, reads, sizes["train"], done)
            ops.train_pass(prepared, reads)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            evaluated = ops.evaluate([splits[split] for split in SPLITS], streams.index, outputs=(False, True))
            timing = {"seconds": seconds, "eval_seconds": time.perf_counter() - started}
            scores = dict(zip(SPLITS, evaluated))  # the outputs of the test split only
            done = [p + 1 for p in done]
            rows = _rows(done, scores, sizes, lrs, timing, pop.cross_entropy)
            pass_number = max(done)
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
            left = [results[active[k]] for k in gone]
            if gone:
                keep = [k for k in range(len(active)) if k not in gone]
                active, done = [active[k] for k in keep], [done[k] for k in keep]
                pop.keep(keep)
                streams.keep(keep)
            if exploit is not None and active and pass_number < passes:
                _exploit(exploit, pass_number, pop, results, active, configs, shared, prints, streams.index)
            if on_checkpoint is not None and checkpoint_every:
                _checkpoints(on_checkpoint, checkpoint_every, passes, pop, results, active, done, configs, shared)
            if refill is not None:
                ended = [k for k, p in enumerate(done) if p == passes]  # finished: their lanes are free too
                for k in ended:
                    results[active[k]].status = "finished"
                    results[active[k]].params = pop.member_params(k)
                    left.append(results[active[k]])
                if ended:
                    keep = [k for k in range(len(active)) if k not in ended]
                    active, done = [active[k] for k in keep], [done[k] for k in keep]
                    pop.keep(keep)
                    streams.keep(keep)
                if left or len(active) < lanes:
                    joining = refill(pass_number, lanes - len(active), left)[: lanes - len(active)]
                    _join(joining, pop, streams, results, active, done, ops, configs, prints, keeps)
    for k, pos in enumerate(active):
        results[pos].status = "finished"
        results[pos].params = pop.member_params(k)
    return results


def _join(
    joining: list[tuple[Member, object]],
    pop: Population,
    streams: Streams,
    results: list[RunResult],
    active: list[int],
    done: list[int],
    ops: Backend,
    configs: list[dict],
    prints: list[str],
    keeps: bool,
) -> None:
    """Refilled members join the population at pass 0, their results after the others'."""
    if not joining:
        return
    new = [member for member, _ in joining]
    pop.extend(new)
    streams.add([d for _, d in joining])
    if keeps:
        prints.extend(fingerprint(d) for d in streams.datasets[len(prints) :])
        configs.extend(member_config(m, prints[d]) for m, d in zip(new, streams.index[-len(new) :]))
    for member in new:
        active.append(len(results))
        done.append(0)
        results.append(RunResult(member=member, backend=ops.name, kernel_build=ops.build, cpu=kernel.cpu_model()))


def _checkpoints(
    on_checkpoint: CheckpointHook,
    every: int,
    passes: int,
    pop: Population,
    results: list[RunResult],
    active: list[int],
    done: list[int],
    configs: list[dict],
    shared: dict,
) -> None:
    """The live members' state every `every` passes and after the last, one checkpoint per pass count
    (a refilled population's members may be at different passes)."""
    by_done: dict[int, list[int]] = {}
    for k, p in enumerate(done):
        if p % every == 0 or p == passes:
            by_done.setdefault(p, []).append(k)
    for p, places in by_done.items():
        live = [results[active[k]] for k in places]
        state = Checkpoint.of(pop, live, [configs[active[k]] for k in places], shared, p, places=places)
        on_checkpoint(state, [active[k] for k in places])


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
    pop: Population, ops: Backend, prepared: Prepared, member_index: list[int], n: int, done: list[int]
) -> None:
    """SDLM: "before each pass, estimate h over a few hundred patterns" (LeNet-5) of the pass's n, each
    member on its own dataset at the same places; in "running" mode only before the first pass, then
    per pattern. Members at another pass index draw another sample: one estimate per pass index."""
    mode = pop.optim.curvature
    if mode not in ("pass", "running"):
        return
    groups: dict[int, list[int]] = {}
    for k, pass_index in enumerate(done):
        if mode == "pass" or pass_index == 0:
            groups.setdefault(pass_index, []).append(k)
    if len(groups) == 1 and len(next(iter(groups.values()))) == pop.K:  # every member at one pass
        (pass_index,) = groups
        sample = hessian_sample(n, pop.optim.samples, pass_index)
        pop.optim.set_curvature(ops.sample_curvature(prepared, member_index, sample))
        return
    for pass_index, places in groups.items():
        sample = hessian_sample(n, pop.optim.samples, pass_index)
        h = ops.sample_curvature(prepared, member_index, sample, members=places)
        pop.optim.set_curvature({name: t.to(pop.device) for name, t in h.items()}, rows=places)


def _rows(
    pass_numbers: list[int],
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
        row: dict[str, float] = {"pass": pass_numbers[k]}
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
