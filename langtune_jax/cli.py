"""``langtune`` command line: parses arguments and delegates to the library.

Every subcommand is a thin call into an importable function, so anything the CLI does a user can
do from Python. Problems a user can fix (bad config, missing file, bad data, a diverged run, a
folder that cannot be written) end the process with exit status 2 and one line on stderr that
names the problem and the fix; nothing is half-written. ``--debug`` (anywhere on the command
line) or ``LANGTUNE_DEBUG=1`` shows the traceback instead. ``docs/errors.md`` lists the
catalogue of mistakes and their messages (generated from ``tests/test_bad_inputs.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

#: Exit status of every user-fixable failure (as argparse uses for usage errors).
EXIT_USER_ERROR = 2
#: Exit status after a second Ctrl-C (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (the CLI's error surface is one line)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]``, repeatable, as ``HfArgumentParser``-style users expect."""
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys (values are YAML; a number indexes a list): "
        "--set train.steps=100 sampling.strategy=uniform data.sources.0.path=d/{split} "
        "(repeatable; `langtune config` lists the keys)",
    )


def _add_config(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    # nargs="?" for all: `--set a=1 CONFIG` would otherwise swallow CONFIG (see parse_args).
    help_text = "YAML run config; relative paths in it resolve against its folder"
    p.add_argument("config", nargs="?", help=help_text + (" (optional)" if optional else ""))


def _verbosity() -> argparse.ArgumentParser:
    """``-v`` accepted before or after the subcommand (SUPPRESS keeps the top-level value)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    return common


def _version() -> str:
    from langtune_jax import __version__

    return f"langtune {__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The ``langtune`` parser: the global flags and one subcommand per library entry point."""
    p = _Parser(
        prog="langtune",
        description="Balanced multilingual parameter-efficient fine-tuning (JAX + Flax NNX).",
    )
    p.add_argument("-v", "--verbose", action="store_true", default=False, help="debug logging")
    p.add_argument("--version", action="version", version=_version(), help="print the version")
    p.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error (also LANGTUNE_DEBUG=1); accepted anywhere",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_verbosity()]
    subcommands = (
        _add_train,
        _add_eval,
        _add_predict,
        _add_plan,
        _add_config_command,
        _add_export,
        _add_compare,
        _add_generate,
    )
    for add in subcommands:
        add(sub, common)
    return p


def _add_train(sub, common: list[argparse.ArgumentParser]) -> None:
    t = sub.add_parser(
        "train", parents=common, help="train a run; resumes when the run folder has checkpoints"
    )
    _add_config(t)
    _add_overrides(t)
    t.add_argument("--run-dir", help="run folder (default: <run.output_dir>/<run.name>)")
    t.add_argument(
        "--restart",
        action="store_true",
        help="move an existing run in the folder aside (RUN_DIR.old-<timestamp>) and start over",
    )
    t.add_argument(
        "--extend",
        action="store_true",
        help="resume with a changed train.steps: continue from the last step, schedule and plan "
        "recomputed from there",
    )


def _add_eval(sub, common: list[argparse.ArgumentParser]) -> None:
    e = sub.add_parser("eval", parents=common, help="per-language evaluation of a trained run")
    e.add_argument("run_dir", help="a run folder written by `langtune train`")
    e.add_argument(
        "--split",
        default=None,
        help="split to evaluate (default: eval.split); with --data, the report's name "
        "(default: the file's stem)",
    )
    e.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="evaluate this file, folder or glob instead of a split of the run's data (read with "
        "the columns of the run's first source; {language} in it names the language)",
    )
    e.add_argument(
        "--language", default=None, help="with --data: the language of every row of that file"
    )


def _add_predict(sub, common: list[argparse.ArgumentParser]) -> None:
    pr = sub.add_parser(
        "predict",
        parents=common,
        help="a classification run's predictions on new, unlabelled data (JSON Lines)",
    )
    pr.add_argument("run_dir", help="a run folder written by `langtune train`")
    pr.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="file, folder or glob to predict, read with the columns of the run's first source "
        "(labels, if any, are ignored: score labelled data with `langtune eval --data`); "
        "{language} in it names the language",
    )
    pr.add_argument("--language", default=None, help="the language of every row of --data")
    pr.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="JSON Lines file to write (default: RUN_DIR/predictions/<data's stem>.jsonl)",
    )
    pr.add_argument("--overwrite", action="store_true", help="replace --out when it exists")


def _add_plan(sub, common: list[argparse.ArgumentParser]) -> None:
    pl = sub.add_parser(
        "plan", parents=common, help="print the sampling plan of a config; no training"
    )
    _add_config(pl)
    _add_overrides(pl)


def _add_config_command(sub, common: list[argparse.ArgumentParser]) -> None:
    cf = sub.add_parser(
        "config",
        parents=common,
        help="list every config key with its type, default, value and doc",
        description="Every config key with its type, default, the config's value (* = differs "
        "from the default) and a one-line doc, grouped by section. Without CONFIG: the defaults.",
    )
    _add_config(cf, optional=True)
    _add_overrides(cf)


def _add_export(sub, common: list[argparse.ArgumentParser]) -> None:
    x = sub.add_parser(
        "export", parents=common, help="export a run as a PEFT adapter or a merged HF checkpoint"
    )
    x.add_argument("run_dir", help="a run folder written by `langtune train`")
    x.add_argument(
        "--format",
        choices=("peft", "merged", "adapterhub"),
        default="peft",
        help="peft: a Hugging Face PEFT adapter folder (LoRA runs); merged: a full checkpoint "
        "with LoRA folded into the weights; adapterhub: the `adapters` library's saved-adapter "
        "folder (bottleneck-adapter runs; a language-adapter run writes OUT/<language>/ per "
        "language) (default: peft)",
    )
    x.add_argument("--out", required=True, help="output folder")
    which = x.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, default=None, help="export this checkpoint step")
    which.add_argument(
        "--best", action="store_true", help="export the best checkpoint (train.best_metric)"
    )


def _add_compare(sub, common: list[argparse.ArgumentParser]) -> None:
    c = sub.add_parser(
        "compare", parents=common, help="side-by-side per-language table and plot of runs"
    )
    c.add_argument("run_dirs", nargs="+", help="run folders (the first is the baseline)")
    c.add_argument(
        "--metric", default=None, help="metric to compare (default: each run's headline)"
    )
    c.add_argument("--out", default=None, help="folder for the comparison plot and table")
    c.add_argument(
        "--split", default=None, help="report split (default: test when the runs have several)"
    )


def _add_generate(sub, common: list[argparse.ArgumentParser]) -> None:
    g = sub.add_parser(
        "generate", parents=common, help="complete prompts with a trained causal-LM run"
    )
    g.add_argument("run_dir", help="a causal-LM run folder written by `langtune train`")
    g.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        required=True,
        help="prompt text (repeatable: the prompts run as one batch)",
    )
    g.add_argument(
        "--max-new-tokens", type=int, default=32, help="most new tokens per prompt (default 32)"
    )
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: off)"
    )
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument(
        "--language",
        dest="languages",
        action="append",
        help="prompt language, for runs with per-language adapters (once, or once per prompt)",
    )


def parse_args(
    argv: list[str], parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """Parse a ``langtune`` command line (``--debug`` already taken out).

    CONFIG written after ``--set a=1 b=2`` (argparse hands it to ``--set``) is taken back.

    Raises:
      SystemExit: a usage error (exit status 2, one line on stderr), as argparse does.
    """
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    _config_arg(parser, args)
    return args


def _config_arg(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Recover CONFIG written after ``--set a=1 b=2`` (argparse hands it to --set), or fail."""
    if getattr(args, "config", "") is None:
        overrides = getattr(args, "overrides", [])
        if overrides and "=" not in overrides[-1]:
            args.config = overrides.pop()
        elif args.command != "config":  # the only command whose CONFIG is optional
            parser.error(f"{args.command}: the following arguments are required: config")
    for item in getattr(args, "overrides", []):
        if "=" not in item:
            parser.error(
                f"{args.command}: --set takes KEY=VALUE pairs; {item!r} has no '='"
                " (put CONFIG before --set)"
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``langtune`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug may follow the subcommand too (`langtune train cfg.yaml --debug`).
    debug = "--debug" in argv or os.environ.get("LANGTUNE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # absl (orbax, grain) logs every step at INFO; keep the console for our own lines.
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"langtune {args.command}: interrupted; nothing more was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as err:
        if debug:
            raise
        print(f"langtune {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input or the environment is wrong", not "langtune is"."""
    import yaml
    from safetensors import SafetensorError

    from langtune_jax.train import RunFolderError, TrainingDiverged

    # ValueError covers ConfigError, DataError, JSON decoding and bad values from the libraries.
    return (
        ValueError,
        OSError,
        yaml.YAMLError,
        SafetensorError,
        TrainingDiverged,
        RunFolderError,
    )


def _one_line(err: BaseException) -> str:
    """The error as one line: its message with line breaks folded, or its type when empty."""
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text or type(err).__name__


def _dispatch(args: argparse.Namespace) -> int:
    _COMMANDS[args.command](args)
    return 0


def _train(args: argparse.Namespace) -> None:
    from langtune_jax.config import load_config
    from langtune_jax.train import train

    config = load_config(args.config, args.overrides)
    train(config, run_dir=args.run_dir, restart=args.restart, extend=args.extend)


def _plan(args: argparse.Namespace) -> None:
    from langtune_jax.config import load_config
    from langtune_jax.train import sampling_plan

    print(sampling_plan(load_config(args.config, args.overrides)).table())


def _config_reference(args: argparse.Namespace) -> None:
    from langtune_jax.config import load_config
    from langtune_jax.config_reference import config_reference, format_reference

    config = load_config(args.config, args.overrides) if args.config else None
    if config is None and args.overrides:
        raise ValueError("--set needs a CONFIG to apply to: langtune config CONFIG --set ...")
    print(format_reference(config_reference(config)))


def _eval(args: argparse.Namespace) -> None:
    from langtune_jax.train import evaluate_run

    evaluate_run(Path(args.run_dir), split=args.split, data=args.data, language=args.language)


def _predict(args: argparse.Namespace) -> None:
    from langtune_jax.train.predict import predict_run

    out = Path(args.out) if args.out else None
    predict_run(
        Path(args.run_dir), args.data, language=args.language, out=out, overwrite=args.overwrite
    )


def _export(args: argparse.Namespace) -> None:
    from langtune_jax.train import export_run

    export_run(
        Path(args.run_dir), fmt=args.format, out=Path(args.out), step=args.step, best=args.best
    )


def _compare(args: argparse.Namespace) -> None:
    from langtune_jax.train.runs import compare_run_folders

    out = Path(args.out) if args.out else None
    compare_run_folders(
        [Path(d) for d in args.run_dirs], metric=args.metric, split=args.split, out=out
    )


def _generate(args: argparse.Namespace) -> None:
    from langtune_jax.train.runs import generate_run

    generate_run(
        Path(args.run_dir),
        args.prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        languages=args.languages,
    )


#: The library call behind each subcommand.
_COMMANDS = {
    "train": _train,
    "plan": _plan,
    "config": _config_reference,
    "eval": _eval,
    "predict": _predict,
    "export": _export,
    "compare": _compare,
    "generate": _generate,
}


if __name__ == "__main__":
    sys.exit(main())
