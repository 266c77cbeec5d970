"""automaster: master your music with a model trained to undo mastering damage.

Give it a mix or a damaged master and it gives back a mastered file: loud enough, never above
-1 dBTP, its echo and level restored, optionally matched to a reference track. It can also make
its own training data (demaster a corpus of music), train and search models on Ray, and compare
the runs it logged to MLflow.

Developers: one module per command (its ``add_parser`` and ``run``); what they share is in
:mod:`.common` and, for ``master`` and ``evaluate``, :mod:`.repair`. A user's mistake prints one
line and exits 2; a job that ran exits 0 even when some items failed (they are in its summary),
1 when nothing could be processed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from automaster import __version__
from automaster.cli import compare, compressor, demaster, demo, evaluate, master, train, tune
from automaster.cli.common import EXIT_CODES_HELP, EXIT_FAILED, EXIT_OK, EXIT_USAGE, OneLineParser, UsageError, setup_logging
from automaster.cli.repair import default_inversion
from automaster.config import ConfigError

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "default_inversion", "main"]

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    master.add_parser, demo.add_parser, demaster.add_parser, train.add_parser, tune.add_parser, evaluate.add_parser,
    compare.add_parser, compressor.add_parser,
]

DESCRIPTION = """\
Master your music with a model trained to undo mastering damage: loud enough, never above
-1 dBTP, its echo and level restored, optionally matched to a reference track. It also makes
its own training data, trains and searches models on Ray and keeps every run in MLflow."""

EXAMPLES = """\
examples:
  automaster master --input song.wav --out mastered.wav       master one file
  automaster master --input mixes/ --out mastered/            master a folder (resumes)
  automaster demo                                             try everything on the bundled music
  automaster demaster --corpus ~/music --out results/paired   make training pairs
  automaster train --data results/paired --out results/train  train on Ray Train
  automaster compare                                          the MLflow runs, best first

'automaster COMMAND --help' tells more; the documentation is in docs/ (mkdocs serve)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``automaster`` parser with every command of :data:`COMMANDS`."""
    parser = OneLineParser(prog="automaster", description=DESCRIPTION, epilog=f"{EXAMPLES}\n\n{EXIT_CODES_HELP}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def as_flag(message: str, args: argparse.Namespace) -> str:
    """A settings error in the user's words: a message that starts with a field the command has
    a flag for (``clip_seconds must be >= 1, got nan``) names the flag (``--clip-seconds must ...``)."""
    head = message.split(" ", 1)[0].rstrip(":")
    field = head.rsplit(".", 1)[-1] if head.count(".") == 1 else head  # "demaster.variants 0: ..." too
    if field.isidentifier() and field != "command" and field in vars(args):
        return "--" + field.replace("_", "-") + message[len(head):]
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command; a user's mistake is one line on stderr and exit code 2."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's own parser says it: 'automaster master: error: ... --set' and its --help
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    setup_logging(getattr(args, "verbose", False))
    from automaster.pipelines.runtime import terminate_as_interrupt

    terminate_as_interrupt()  # in-process jobs too; a Ray job sets it again after ray.init
    try:
        return args.func(args)
    except (UsageError, ConfigError) as exc:
        print(f"automaster {args.command}: error: {as_flag(str(exc), args)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # Ctrl-C: one line (a search says how to resume), no traceback
        detail = str(exc) or "interrupted; finished outputs are kept and a re-run of the same command resumes"
        print(f"automaster {args.command}: {detail}", file=sys.stderr)
        return 130
    except Exception as exc:
        from automaster.corpus import CorpusError
        from automaster.storage import DiskFullError

        if isinstance(exc, DiskFullError):  # the job stopped: one line, not a traceback per file
            print(f"automaster {args.command}: error: {exc}; the job stopped (finished outputs are kept, the "
                  "unfinished ones removed): free some space and re-run the same command to resume", file=sys.stderr)
            return EXIT_FAILED
        if isinstance(exc, CorpusError):
            print(f"automaster {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise
