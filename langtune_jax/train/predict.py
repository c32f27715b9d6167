"""``langtune predict``: a trained classification run's predictions on new, unlabelled data.

The file is read with the run's first source's columns and format options, as ``langtune eval
--data`` reads it, but without the label (tags) column: any labels in it are ignored. Rows get
the run's tokenization and ``data.max_length`` (cut rows are counted in a warning), languages
come from the language column, ``{language}`` in the path or ``--language``, and a language the
run did not train gets the zero-shot adapter check. One JSON object per row, in the file's order
within each language (languages sorted): ``language``, ``index``, ``text``, ``prediction`` and
``score`` (token classification: ``predictions`` and ``scores`` per word), see
:mod:`langtune_jax.eval.predictions`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import jax

from langtune_jax import eval as eval_lib
from langtune_jax.config import ConfigError
from langtune_jax.train.runs import load_run, other_source, saved_config
from langtune_jax.train.scoring import eval_outputs
from langtune_jax.train.session import check_zero_shot


def predict_run(
    run_dir: Path,
    data: str | Path,
    *,
    language: str | None = None,
    out: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the run's predictions on ``data`` as JSON Lines; returns the file.

    Args:
      run_dir: a finished classification run.
      data: a file, folder or glob (``{language}`` in it names each file's language).
      language: the language of every row (``--language``), for files without a language column.
      out: the JSON Lines file to write; default ``RUN_DIR/predictions/<data's stem>.jsonl``.
      overwrite: replace ``out`` when it exists (else an existing file is refused).

    Raises:
      ConfigError: the run is not a classification run; ``data`` matches no file; ``out``
        exists (without ``overwrite``) or is a folder.
    """
    task = saved_config(run_dir).model.task
    if task not in eval_lib.PREDICTION_TASKS:
        raise ConfigError(
            f"langtune predict needs a classification run; {run_dir} is a {task} run "
            "(complete prompts with `langtune generate`, score text with `langtune eval --data`)"
        )
    source, name = other_source(run_dir, str(data), None, language, report=False)
    label_column = "label_column" if task == "sequence-classification" else "tags_column"
    split = f"predict-{name}"  # never one of the run's own splits (train, validation, ...)
    source = dataclasses.replace(source, splits=[split], **{label_column: None})
    out = Path(out) if out is not None else run_dir / "predictions" / f"{name}.jsonl"
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the JSON Lines file to write")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} exists; pass --overwrite to replace it, or another --out")
    _, session = load_run(run_dir)
    session.dataset.add_split(split, source)
    check_zero_shot(session.model, session.dataset, [split])
    predictions = eval_lib.PredictionLog(task, session.label_names or [], labelled=False)
    for host in eval_outputs(session, split):
        predictions.add(host)
    if jax.process_index() != 0:
        return out
    rows = eval_lib.split_rows(predictions, session.dataset, split, session.tokenizer)
    eval_lib.write_predictions(out, rows)
    counts = Counter(r["language"] for r in rows)
    per_language = ", ".join(f"{lang} {n:,}" for lang, n in sorted(counts.items()))
    print(f"wrote {len(rows):,} predictions ({per_language}) to {out}")
    if task == "sequence-classification":
        shares = Counter(r["prediction"] for r in rows).most_common()
        print("predicted: " + ", ".join(f"{label} {n:,}" for label, n in shares))
    return out
