"""The study definitions as Hydra's config group `sweeps`, in a checkout as in an installed package."""
