"""The learning-rate schedules equal transformers' (``get_*_schedule_with_warmup``), step by step,
including a warm-up longer than the run (kept, as transformers keeps it)."""

import numpy as np
import pytest

from langtune_jax.config import TrainConfig
from langtune_jax.train.optim import make_schedule


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("steps, warmup", [(20, 0), (20, 5), (20, 20), (6, 10)])
def test_schedule_equals_transformers(schedule, steps, warmup):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    make = {
        "linear": transformers.get_linear_schedule_with_warmup,
        "cosine": transformers.get_cosine_schedule_with_warmup,
        "constant": lambda opt, w, _: transformers.get_constant_schedule_with_warmup(opt, w),
    }[schedule]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = make(opt, warmup, steps)
    want = []
    for _ in range(steps):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    cfg = TrainConfig(steps=steps, warmup_steps=warmup, learning_rate=1e-3, schedule=schedule)
    ours = make_schedule(cfg)
    got = [float(ours(s)) for s in range(steps)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
    if warmup > steps:  # never peaks: the last step is at (steps - 1) / warmup of the rate
        assert max(got) < 1e-3 * steps / warmup
