"""Checkpointer: keep-N, restore into the given structure, fall back past a corrupted checkpoint."""

import logging

import jax.numpy as jnp
import numpy as np
import pytest

from langtune_jax.train.checkpoint import Checkpointer


def _state(scale):
    return {"a": jnp.full((3, 4), float(scale)), "b": (jnp.arange(2.0) * scale, jnp.int32(scale))}


def test_keeps_the_last_n_and_restores_the_newest(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"step": step})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    step, state, record = ckpt.restore_latest(_state(0))
    assert step == 3 and record == {"step": 3}
    np.testing.assert_array_equal(state["a"], np.full((3, 4), 3.0))
    assert int(state["b"][1]) == 3
    ckpt.close()


def test_keeps_the_best_by_metric_beside_the_latest(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=1, best_metric="f1")
    for step, f1 in ((1, 0.2), (2, 0.9), (3, 0.5), (4, 0.4)):
        ckpt.save(step, _state(step), {"step": step}, {"f1": f1})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4]
    ckpt.close()


def test_corrupted_latest_falls_back_to_previous_with_a_warning(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path, keep=3)
    for step in (1, 2):
        ckpt.save(step, _state(step), {"step": step})
    ckpt.close()
    for f in (tmp_path / "2").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        step, state, _ = Checkpointer(tmp_path, keep=3).restore_latest(_state(0))
    assert step == 1
    np.testing.assert_array_equal(state["a"], np.ones((3, 4)))
    assert "step 2" in caplog.text and "falling back" in caplog.text


def test_a_state_of_another_shape_is_refused(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.close()
    other = {"a": jnp.zeros((5,)), "b": (jnp.zeros(2), jnp.int32(0))}
    with pytest.raises(ValueError, match="does not match"):
        Checkpointer(tmp_path, keep=1).restore(1, other)
