"""The one list of metric names: what every pass records, what a study may optimise,
what a reproduction compares. Namespaced as in lightning-hydra-template (`test/error`)."""

from zipnet import paper

SPLITS = ("train", "test")
# per split, after every pass: the MSE "averaged over the patterns and over the output units"
# (or the cross-entropy), the error in %, and the misses
SPLIT_METRICS = tuple(f"{split}/{name}" for split in SPLITS for name in ("loss", "error", "misses"))
GAP = paper.GAP  # MSE runs only: the mean |ln(run / paper)| over the paper's four figures
# every pass's row; `seconds` (training) and `eval_seconds` are wall time, never compared
PER_PASS = (*SPLIT_METRICS, "lr", "seconds", "eval_seconds", GAP)
OBJECTIVES = (*SPLIT_METRICS, GAP)  # what a study may optimise
COMPARED = (*SPLIT_METRICS, "lr")  # what zipnet-reproduce compares (the gap follows from the rest)
REJECT = "test/reject_at_1pct"  # once, at the last pass: % rejected for 1% error on the rest
