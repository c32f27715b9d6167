"""A session's current state scored on a data split: the per-language report (:func:`evaluate`),
the eval step's per-example outputs (:func:`eval_outputs`, also behind ``langtune predict``) and
the mean loss per language (:func:`language_losses`, the signal of dynamic weights)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from langtune_jax import data as data_lib
from langtune_jax import eval as eval_lib
from langtune_jax.train import mesh as mesh_lib
from langtune_jax.train.session import Session, language_routing
from langtune_jax.train.step import make_eval_step


def evaluate(
    session: Session,
    split_name: str,
    eval_step=None,
    *,
    predictions: eval_lib.PredictionLog | None = None,
) -> dict[str, Any]:
    """Per-language metrics of the current state on a data split (all rows, padding excluded);
    with ``predictions``, every example's prediction is added to that log too."""
    cfg = session.cfg
    outputs = eval_outputs(session, split_name, eval_step)
    acc = eval_lib.PerLanguageAccumulator(
        cfg.model.task, session.dataset.all_languages, label_names=session.label_names
    )
    for host in outputs:
        acc.update(host)
        if predictions is not None:
            predictions.add(host)
    return acc.compute(
        source_language=cfg.eval.source_language, zero_shot=session.dataset.zero_shot
    )


def eval_outputs(session: Session, split_name: str, eval_step=None) -> Iterator[dict[str, Any]]:
    """The eval step's outputs with their batch, gathered from every host as numpy, one dict
    per eval batch of ``split_name`` (packed batches unpacked to one entry per example)."""
    from jax.experimental import multihost_utils

    cfg = session.cfg
    session.dataset.split(split_name)  # may add zero-shot languages (`langtune eval --split`)
    if len(session.dataset.all_languages) != session.routing_size:
        languages = session.dataset.all_languages
        session.routing = language_routing(session.model, languages)
        session.routing_size = len(languages)
        eval_step = None  # the routing table is part of the compiled step
    if eval_step is None:
        eval_step = make_eval_step(
            session.split,
            task=cfg.model.task,
            mesh=session.mesh,
            param_shardings=session.shardings,
            routing=session.routing,
        )
    for local in session.dataset.eval_batches(split_name, batch_size=cfg.eval.batch_size):
        batch = mesh_lib.put_batch(local, session.mesh)
        out = eval_step(session.split.trainable, session.split.mutable, session.split.frozen, batch)
        host = multihost_utils.process_allgather({**out, **batch}, tiled=True)
        host = {k: np.asarray(v) for k, v in host.items()}
        if "segment_language" in host:  # packed classification: one entry per example again
            host = data_lib.unpack_segments(host, cfg.model.task)
        yield host


def language_losses(session: Session, batches, eval_step) -> dict[str, float]:
    """Mean loss per language of the current state over eval-style ``batches`` (all hosts).

    Languages with no counted target in the batches are left out.
    """
    from jax.experimental import multihost_utils

    languages = session.dataset.languages
    sums = np.zeros((2, len(languages)))  # loss sums, counts (float64)
    for local in batches:
        batch = mesh_lib.put_batch(local, session.mesh)
        out = eval_step(session.split.trainable, session.split.mutable, session.split.frozen, batch)
        keys = ("nll_sum", "token_count", "language_id", "example_mask")
        host = multihost_utils.process_allgather(
            {k: v for k, v in {**out, **batch}.items() if k in keys}, tiled=True
        )
        keep = np.asarray(host["example_mask"]) > 0
        lang = np.asarray(host["language_id"])[keep]
        np.add.at(sums[0], lang, np.asarray(host["nll_sum"], np.float64)[keep])
        np.add.at(sums[1], lang, np.asarray(host["token_count"], np.float64)[keep])
    return {lang: float(s / c) for lang, s, c in zip(languages, *sums) if c > 0}
