"""``moram-ref``: the command line. Sub-commands: ``demo`` (the NumPy main job), ``text-cl`` (the real-encoder
experiment), ``bench`` (layer speed)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moram-ref", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from moram_ref.experiments.toy import demo  # noqa: PLC0415

    demo.add_arguments(sub.add_parser("demo", help="NumPy continual-learning demo: recall + digits streams"))
    text = sub.add_parser("text-cl", help="real pretrained encoder (MiniLM) on the O-LoRA tasks, all methods × seeds")
    from moram_ref.experiments.textcl import run as textcl  # noqa: PLC0415  (argument definitions only)

    textcl.add_arguments(text)
    from moram_ref.experiments.llm import run as llm  # noqa: PLC0415  (argument definitions only)

    llm.add_arguments(sub.add_parser("llm", help="TRACE / O-LoRA sequences on causal LMs (real or tiny)"))
    from moram_ref.experiments.clip import run as clip  # noqa: PLC0415  (argument definitions only)

    clip.add_arguments(sub.add_parser("clip", help="X-TAIL on open_clip (real or tiny); --verify checks the data"))
    from moram_ref import report  # noqa: PLC0415

    report.add_arguments(sub.add_parser("report", help="render a results table (README's generated blocks)"))
    from moram_ref.experiments.toy import ablation  # noqa: PLC0415

    ablation.add_arguments(sub.add_parser("ablation", help="the paper's claims on the NumPy streams: granularity, "
                                          "top-k, routing diagnostics, when the newest atoms take over"))
    sub.add_parser("bench", help="layer benchmark (needs torch): python -m moram_ref.bench --help")
    args, rest = parser.parse_known_args(argv)
    if args.command == "report":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return report.run(args)
    if args.command in ("demo", "text-cl", "llm", "clip", "ablation"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        {"demo": demo.run, "text-cl": textcl.run, "llm": llm.run, "clip": clip.run,
         "ablation": ablation.run}[args.command](args)
        return 0
    from moram_ref import bench  # noqa: PLC0415

    return bench.main(rest)


if __name__ == "__main__":
    sys.exit(main())
