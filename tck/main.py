"""`tck`: the parser and the one place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
import sys


def build_parser() -> argparse.ArgumentParser:
    from tck import build, cache, measure, tune
    p = argparse.ArgumentParser(prog="tck", description=sys.modules["tck"].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True)
    build.add_commands(sub)
    measure.add_commands(sub)
    tune.add_commands(sub)
    cache.add_commands(sub)
    return p


# commands whose --model is a spec: a bundled name, a .toml path, or the name of a model built before
SPEC_COMMANDS = ("default", "report", "campaign", "tune", "bench-tuner", "bench-peer", "manifests", "compare")


def _resolve_model(args) -> None:
    """--model as a spec path (``args.model``) and the model's name (``args.model_name``), so every
    command takes a path as it takes a name and finds its results by the name they are stored under.
    Reports and manifests of results whose spec is gone still go by the name given."""
    if args.command not in SPEC_COMMANDS:
        return
    from build_engines.errors import SpecError
    from build_engines.spec import load_spec, spec_path
    from tck.paths import DEFAULT_BUILD
    try:
        path = spec_path(args.model, getattr(args, "build_dir", DEFAULT_BUILD))
    except SpecError:
        if args.command not in ("report", "manifests") or Path(args.model).suffix:   # a path that is not there: say so
            raise
        args.model_name = args.model
        return
    args.model, args.model_name = str(path), load_spec(path, resolve=False).name


def _terminated(signum, frame):
    from build_engines.errors import Interrupted, note_signal
    note_signal(signum)
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from build_engines import isa
    from build_engines.errors import InternalError, Interrupted, UserError
    try:
        isa.check_settings()                    # TCK_CPU_ISA / TCK_CPU_INT8_RECIPE checked once, up front
    except isa.IsaSettingError as e:
        print(f"{args.command}: FAILED: {e}", file=sys.stderr)
        return 2
    from build_engines.errors import forget_signals
    forget_signals()                                      # one command's signals, not an earlier one's
    before = signal.signal(signal.SIGTERM, _terminated)   # SIGTERM stops a command as Ctrl-C does, cleaning up
    before_int = signal.signal(signal.SIGINT, _terminated)
    try:
        _resolve_model(args)
        return args.fn(args)
    except KeyboardInterrupt as e:
        stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
        where = f" during {stop.where}" if stop.where else ""
        state = f"; {stop.state}" if stop.state else ""
        print(f"{args.command}: interrupted ({signal.Signals(stop.signum).name}){where}{state}", file=sys.stderr)
        return stop.exit_code
    except UserError as e:
        print(f"{args.command}: FAILED: {e}", file=sys.stderr)
        return 2
    except InternalError as e:
        print(f"{args.command}: FAILED (a bug, please report it with the command): {e}", file=sys.stderr)
        return 3
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_int)
