"""`tck`: the parser and the one place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def build_parser() -> argparse.ArgumentParser:
    from tck import build, measure, tune
    p = argparse.ArgumentParser(prog="tck", description=sys.modules["tck"].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True)
    build.add_commands(sub)
    measure.add_commands(sub)
    tune.add_commands(sub)
    return p


def _terminated(signum, frame):
    from build_engines.errors import Interrupted
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from build_engines import isa
    from build_engines.errors import InternalError, Interrupted, UserError
    try:
        isa.cpu_recipe(isa.int8_isa())          # TCK_CPU_ISA / TCK_CPU_INT8_RECIPE checked once, up front
    except isa.IsaSettingError as e:
        print(f"{args.command}: FAILED: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminated)     # SIGTERM stops a command as Ctrl-C does, cleaning up
    try:
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
