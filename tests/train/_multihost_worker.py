"""One process of a local multi-host training run (used by ``tests/train/test_multihost.py``).

    python -m tests.train._multihost_worker CONFIG RUN_DIR OUT_NPZ PROCESS_ID NUM_PROCESSES PORT \\
        [KEY=VALUE ...]

Each process simulates ``LOCAL_DEVICES`` CPU devices (``XLA_FLAGS`` is set here, before JAX is
imported), joins the others through ``jax.distributed.initialize`` -- driven by the run config's
``mesh.distributed`` / ``coordinator_address`` / ``num_processes`` / ``process_id`` overrides (plus
any ``KEY=VALUE`` overrides given), as a user would launch it -- and trains with the real
:func:`langtune_jax.train.train`. Afterwards every process restores the run folder collectively
(:func:`langtune_jax.train.runs.load_run`), gathers the trainable leaves (they may be sharded over
devices of both processes) and process 0 writes them to ``OUT_NPZ`` as ``leaf_0, leaf_1, ...`` in
``jax.tree.leaves`` order.
"""

from __future__ import annotations

import os
import sys

LOCAL_DEVICES = 2


def main(argv: list[str]) -> None:
    config_path, run_dir, out_npz, process_id, num_processes, port, *extra = argv
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
    os.environ["JAX_PLATFORMS"] = "cpu"

    from pathlib import Path

    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from langtune_jax.config import load_config
    from langtune_jax.train import train
    from langtune_jax.train.runs import load_run

    overrides = [
        "mesh.distributed=true",
        f"mesh.coordinator_address=localhost:{port}",
        f"mesh.num_processes={num_processes}",
        f"mesh.process_id={process_id}",
        *extra,
    ]
    extend = "--extend" in overrides  # as `langtune train --extend`
    cfg = load_config(config_path, [o for o in overrides if o != "--extend"])
    run_dir = train(cfg, run_dir=Path(run_dir), extend=extend)
    assert jax.process_count() == int(num_processes), jax.process_count()
    assert jax.device_count() == LOCAL_DEVICES * int(num_processes), jax.devices()

    _, session = load_run(run_dir)
    leaves = jax.tree.leaves(session.split.trainable)
    # tiled=True keeps global shapes: a sharded leaf is reassembled from both processes' shards.
    gathered = [np.asarray(x) for x in multihost_utils.process_allgather(leaves, tiled=True)]
    if jax.process_index() == 0:
        np.savez(out_npz, **{f"leaf_{i}": x for i, x in enumerate(gathered)})
    multihost_utils.sync_global_devices("multihost_worker_done")
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
