"""The names of every MLflow tag the project writes or reads, defined once (gakt.<name>)."""
from __future__ import annotations

# --- every run ---
TAG_EXP_ID = "gakt.experiment_id"
TAG_TITLE = "gakt.short_title"
TAG_KIND = "gakt.kind"  # train | repro | eval
TAG_OUTCOME = "gakt.outcome"
TAG_OUTCOME_REASON = "gakt.outcome_reason"
TAG_REPRO_OF = "gakt.reproduction_of"
TAG_EVAL_OF = "gakt.evaluation_of"
TAG_BEST_VAL_AUC = "gakt.best_val_auc"
TAG_HOST = "gakt.host"
TAG_PID = "gakt.pid"

# --- studies: the parent and its children ---
TAG_STUDY_ID = "gakt.study_id"
TAG_STUDY_RUN = "gakt.study_run"  # on every child: the run id of its study's parent
TAG_SLOT = "gakt.study_slot"
TAG_ATTEMPT = "gakt.study_attempt"
TAG_POINT = "gakt.study_point"
TAG_POINT_VALUES = "gakt.study_point_values"  # JSON of the point's grid values / the trial's parameters
TAG_FOLD, TAG_SEED = "gakt.study_fold", "gakt.study_seed"  # known before the child logs its params
TAG_TOTAL = "gakt.children_total"
TAG_FINISHED = "gakt.children_finished"

# --- what a run records about itself (compared as warnings by gakt-compare) ---
TAG_BEST_EPOCH = "gakt.best_epoch"
TAG_DATA_HASH = "gakt.data_hash"
TAG_DATA_REGISTRY = "gakt.data_registry"
TAG_DATA_ROOT_RESOLVED = "gakt.data_root_resolved"
TAG_DATA_SOURCE = "gakt.data_source"
TAG_DEVICE = "gakt.device"
TAG_EVALUATED = "gakt.evaluated"
TAG_EVAL_PROTOCOL = "gakt.eval_protocol"  # pykt-question (headline windowauclate_mean) or pykt-concept
TAG_GIT_COMMIT = "gakt.git_commit"
TAG_GIT_DIRTY = "gakt.git_dirty"
TAG_MLFLOW_VERSION = "gakt.mlflow_version"
TAG_PACKAGE_VERSION = "gakt.package_version"
TAG_PYTHON_VERSION = "gakt.python_version"
TAG_SEARCH_BEST_TRIAL = "gakt.search_best_trial"
TAG_SEARCH_BEST_VALUES = "gakt.search_best_values"
TAG_STUDY_BEST_POINT = "gakt.study_best_point"
TAG_STUDY_BEST_VALUES = "gakt.study_best_values"
TAG_STUDY_TASK_SECONDS = "gakt.study_task_seconds"
TAG_TORCH_THREADS = "gakt.torch_threads"
TAG_TORCH_VERSION = "gakt.torch_version"
TAG_TRIAL = "gakt.trial"

TAG_DERIVED_PREFIX = "gakt.derived."  # + parameter: the value a data-dependent setting (auto) took for this data set

# --- tags of a run's dataset inputs (service/training.py) ---
TAG_DATASET_SHA256 = "gakt.sha256"  # the file's whole sha256 (the dataset digest holds its first 32 hex digits)
TAG_DATASET_ROWS = "gakt.rows"  # which rows of the file the context reads (folds of train_valid)

# --- tags of a run's logged model (service/models.py) ---
TAG_MODEL_EPOCH = "gakt.model_epoch"  # the epoch of the checkpoint it holds (the best epoch)
TAG_MODEL_VAL_AUC = "gakt.model_val_auc"  # that checkpoint's validation AUC

__all__ = [name for name in tuple(globals()) if name.startswith("TAG_")]
