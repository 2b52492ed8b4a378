"""tck: the command line over build_engines, clients and perf.

The only package that knows argparse, default paths and exit codes. Commands import the libraries
when they run, so `tck --help` imports none of them. Every error the libraries raise on purpose
derives from ``build_engines.errors.TckError``: a user error prints one line and exits 2, an
internal error one line that says it is a bug and exits 3.
"""
