"""The one package that talks to MLflow (DESIGN section 5): nothing outside it imports mlflow (a test checks).

- ``runs``: the store, runs and their tags, a study's run bookkeeping (mlflow imported lazily);
- ``models``: a policy bundle as a pyfunc model, loading one back;
- ``registry``: datasets, model versions and their aliases.
``from diffquant import tracking`` gives the run API below; models and registry are imported where they are used
(publishing stages, serving, the paper trader), never on the training path.
"""

from diffquant.tracking.runs import (
    EXPERIMENT,
    Run,
    StudyRuns,
    TrackingError,
    check_reachable,
    child_run,
    download_artifact,
    library_versions,
    open_run,
    read_run_id,
    search_runs,
    start_child,
    start_run,
    tracking_uri,
)

__all__ = [
    "EXPERIMENT",
    "Run",
    "StudyRuns",
    "TrackingError",
    "check_reachable",
    "child_run",
    "download_artifact",
    "library_versions",
    "open_run",
    "read_run_id",
    "search_runs",
    "start_child",
    "start_run",
    "tracking_uri",
]
