"""The ``hclr-ids`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from hclr_ids import __version__

#: Subcommand modules under ``hclr_ids.commands``, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "run", "train", "evaluate", "predict", "detect", "serve", "export",
    "features", "experiment", "tune", "adapt", "lab",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hclr-ids",
        description="HCLR-IDS intrusion detection for IoMT traffic (CICIoMT2024 features).",
    )
    parser.add_argument("--version", action="version", version=f"hclr-ids {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module_name = f"hclr_ids.commands.{name.replace('-', '_')}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.INFO
    if quiet:
        level = logging.WARNING
    elif verbose > 1:
        level = logging.DEBUG
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=_stderr_console(), show_path=verbose > 1, markup=False)
        fmt = "%(message)s"
    except ImportError:  # rich is a dependency; this keeps logging alive in a broken install
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as error:
        # User-facing errors (bad input, missing files) carry their own explanation.
        logging.getLogger("hclr_ids").debug("error details", exc_info=True)
        print(f"hclr-ids: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
