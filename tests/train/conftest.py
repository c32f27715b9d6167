"""Shared fixtures of the training tests: a tiny random BERT, its tokenizer and JSONL data in three
languages (built once per session, no downloads)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from langtune_jax.config import RunConfig, dump_config, from_dict
from tests.data.conftest import make_tokenizer

LANGS = {"en": 40, "es": 24, "sw": 6}
# What a finished LoRA run of tiny_run_config leaves in its folder (DESIGN.md's run folder).
RUN_FOLDER_FILES = (
    "config.yaml",
    "plan.json",
    "metrics.jsonl",
    "eval/validation/report.json",
    "eval/validation/predictions.jsonl",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
)
WORDS = {
    "en": (["good", "great", "happy", "nice"], ["bad", "sad", "awful", "poor"]),
    "es": (["bueno", "feliz", "bonito", "genial"], ["malo", "triste", "feo", "pobre"]),
    "sw": (["nzuri", "furaha", "safi", "bora"], ["mbaya", "huzuni", "chafu", "duni"]),
}


def _write_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, scale in (("train", 1.0), ("validation", 0.25)):
        (root / split).mkdir(parents=True)
        for lang, n in LANGS.items():
            lines = []
            for _ in range(max(4, int(n * scale))):
                label = int(rng.integers(2))
                words = rng.choice(WORDS[lang][label], size=3)
                lines.append(
                    json.dumps(
                        {
                            "text": " ".join(words),
                            "label": ["neg", "pos"][1 - label],
                            "language": lang,
                        }
                    )
                )
            (root / split / f"{lang}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    import torch
    import transformers

    root = tmp_path_factory.mktemp("loop")
    corpus = [" ".join(w) for pair in WORDS.values() for w in pair]
    tok = make_tokenizer(corpus + ["the a el la"], vocab_size=80)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertForMaskedLM(cfg).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    _write_data(root / "data")
    return root


def tiny_run_config(assets: Path, *, name: str, mesh: dict, **train) -> RunConfig:
    """LoRA on the tiny BERT of ``assets`` with uniform sampling; ``train`` keys override."""
    data = {
        "run": {"name": name, "seed": 0},
        "model": {"name_or_path": str(assets / "model")},
        "peft": {"method": "lora", "lora": {"r": 4, "lora_alpha": 8, "task_type": "SEQ_CLS"}},
        "data": {"sources": [{"path": str(assets / "data" / "{split}")}], "max_length": 16},
        "sampling": {"strategy": "uniform"},
        "train": {"batch_size": 8, "learning_rate": 1e-2, "log_every": 2, **train},
        "eval": {"split": "validation", "final_splits": [], "batch_size": 16},
        "mesh": mesh,
    }
    return from_dict(RunConfig, data)


def wait_for_checkpoint(ckpt_dir, step, proc=None, timeout=180):
    """Wait until checkpoint ``step`` exists in ``ckpt_dir`` (fail if ``proc`` ends first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (ckpt_dir / str(step)).is_dir():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def kill_9_at_checkpoint(cfg: RunConfig, config_path: Path, run_dir: Path, step: int) -> None:
    """Write ``cfg`` to ``config_path``, run ``langtune train`` on ``run_dir`` in a subprocess and
    SIGKILL it once checkpoint ``step`` exists (no chance to clean up)."""
    dump_config(cfg, config_path)
    cmd = [sys.executable, "-m", "langtune_jax.cli", "train", str(config_path)]
    cmd += ["--run-dir", str(run_dir)]
    proc = subprocess.Popen(
        cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wait_for_checkpoint(run_dir / "checkpoints", step, proc)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
