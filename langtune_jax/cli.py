"""``langtune`` command line: parses arguments and delegates to the library.

Every subcommand is a thin call into an importable function, so anything the CLI does a user can
do from Python. Problems a user can fix (bad config, missing file, bad data) end the process with
exit status 2 and one line on stderr that names the problem; nothing is half-written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="langtune",
        description="Balanced multilingual parameter-efficient fine-tuning (JAX + Flax NNX).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a run; resumes when the run folder has checkpoints")
    t.add_argument("config", help="YAML run config")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.steps=100 (repeatable)",
    )
    t.add_argument("--run-dir", help="run folder (default: <run.output_dir>/<run.name>)")

    e = sub.add_parser("eval", help="per-language evaluation of a trained run")
    e.add_argument("run_dir")
    e.add_argument("--split", default=None, help="split to evaluate (default: eval.split)")

    pl = sub.add_parser("plan", help="print the sampling plan of a config; no training")
    pl.add_argument("config")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    x = sub.add_parser("export", help="export a run as a PEFT adapter or a merged HF checkpoint")
    x.add_argument("run_dir")
    x.add_argument("--format", choices=("peft", "merged"), default="peft")
    x.add_argument("--out", required=True, help="output folder")

    c = sub.add_parser("compare", help="side-by-side per-language table and plot of runs")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument(
        "--metric", default=None, help="metric to compare (default: each run's headline)"
    )
    c.add_argument("--out", default=None, help="folder for the comparison plot and table")
    c.add_argument(
        "--split", default=None, help="report split (default: test when the runs have several)"
    )

    g = sub.add_parser("generate", help="complete prompts with a trained causal-LM run")
    g.add_argument("run_dir")
    g.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        required=True,
        help="prompt text (repeatable: the prompts run as one batch)",
    )
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument(
        "--language",
        dest="languages",
        action="append",
        help="prompt language, for runs with per-language adapters (once, or once per prompt)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``langtune`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # absl (orbax, grain) logs every step at INFO; keep the console for our own lines.
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from langtune_jax.config import ConfigError

    try:
        return _dispatch(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"langtune {args.command}: error: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from langtune_jax.config import load_config
        from langtune_jax.train import train

        config = load_config(args.config, args.overrides)
        train(config, run_dir=args.run_dir)
    elif args.command == "plan":
        from langtune_jax.config import load_config
        from langtune_jax.train import sampling_plan

        config = load_config(args.config, args.overrides)
        print(sampling_plan(config).table())
    elif args.command == "eval":
        from langtune_jax.train import evaluate_run

        evaluate_run(Path(args.run_dir), split=args.split)
    elif args.command == "export":
        from langtune_jax.train import export_run

        export_run(Path(args.run_dir), fmt=args.format, out=Path(args.out))
    elif args.command == "compare":
        from langtune_jax.eval import compare_runs, plot_comparison, plot_weight_segments

        table, data = compare_runs(
            [Path(d) for d in args.run_dirs], metric=args.metric, split=args.split
        )
        print(table)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "comparison.md").write_text(table + "\n", encoding="utf-8")
            plot_comparison(data, out / "comparison.png")
            print(f"wrote {out / 'comparison.md'} and {out / 'comparison.png'}")
            if data["weights"]:
                print(f"wrote {plot_weight_segments(data['weights'], out / 'weights.png')}")
    elif args.command == "generate":
        from langtune_jax.train.generate import generate_run

        generate_run(
            Path(args.run_dir),
            args.prompts,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            languages=args.languages,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
