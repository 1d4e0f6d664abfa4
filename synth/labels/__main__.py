"""The command line of the quality labels: ``label`` (teacher ratings, ``synth.labels.label``), ``train`` (fastText
classifier, ``synth.labels.classifier``), ``score`` (scores + tiers, ``synth.labels.tiers``; extra flags go to Beam).
Each command's settings are generated from ``synth.settings`` (``python -m synth.labels label --help``)."""

from __future__ import annotations

import sys

import synth.labels

COMMANDS = {
    "label": ("synth.labels.label", "rate a sample of documents with the teacher"),
    "train": ("synth.labels.classifier", "train the fastText classifier on the labels"),
    "score": ("synth.labels.tiers", "score every document and write the tiers (extra flags go to Beam)"),
}


def main(argv: list[str] | None = None) -> int:
    import importlib

    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] not in COMMANDS:
        usage = "\n".join(f"  {name:6} {text} (python -m {module})" for name, (module, text) in COMMANDS.items())
        print(f"usage: python -m synth.labels {{{','.join(COMMANDS)}}} ...\n\n{usage}\n\n{synth.labels.__doc__}")
        if args and args[0] in ("-h", "--help"):
            return 0
        print(f"error: choose a command: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[args[0]][0]).main(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
