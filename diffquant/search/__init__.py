"""Hyper-parameter search over training: an Optuna study on a shared storage, its trials trained by the grid runner.

``objective``: the search space and what one trial is; ``rounds``: the ask-train-tell rounds through the grid;
``storage``: storage, study, sampler, pruner, summary; ``session``: one command's session on a study;
``params_file``: the best values back into params.yaml. ``stages/optimize.py`` is the command.
"""

from diffquant.search.objective import (
    SPACE,
    Dim,
    TrialOutcome,
    search_space,
    train_trial,
    trial_seed,
    with_params,
)
from diffquant.search.params_file import write_params
from diffquant.search.rounds import TrialHooks, run_search
from diffquant.search.storage import (
    PARENT_RUN_ATTR,
    StorageError,
    StudyMismatch,
    check_setup,
    create_study,
    load_study,
    make_pruner,
    make_sampler,
    open_storage,
    setup,
    storage_kind,
    summarize,
)

__all__ = [
    "PARENT_RUN_ATTR",
    "SPACE",
    "Dim",
    "StorageError",
    "StudyMismatch",
    "TrialHooks",
    "TrialOutcome",
    "check_setup",
    "create_study",
    "load_study",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "run_search",
    "search_space",
    "setup",
    "storage_kind",
    "summarize",
    "train_trial",
    "trial_seed",
    "with_params",
    "write_params",
]
