"""Training: device mesh and shardings, optimizer, the jitted step, Orbax checkpoints, the loop."""

from langtune_jax.train.checkpoint import Checkpointer
from langtune_jax.train.loop import RunFolderError, TrainingDiverged, train
from langtune_jax.train.mesh import make_mesh, put_batch, state_shardings
from langtune_jax.train.optim import make_optimizer, make_schedule
from langtune_jax.train.runs import evaluate_run, export_run, load_run
from langtune_jax.train.session import sampling_plan
from langtune_jax.train.step import make_eval_step, make_train_step, split_model, task_loss

__all__ = [
    "Checkpointer",
    "RunFolderError",
    "TrainingDiverged",
    "evaluate_run",
    "export_run",
    "load_run",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "put_batch",
    "sampling_plan",
    "split_model",
    "state_shardings",
    "task_loss",
    "train",
]
