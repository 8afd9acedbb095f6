"""The ``numerai-dask`` command (and ``python -m numerai_dask``): :func:`numerai_dask.cli.main`, loaded so that a
Ctrl-C while its libraries load is the same one line as later, not a traceback."""

import signal
import sys

if __name__ != "__main__" and "--multiprocessing-fork" in sys.orig_argv:
    # A worker process the command's LocalCluster spawns runs the command's script, and with it this module,
    # before it loads Dask: from here on a Ctrl-C at the terminal is the command's alone (which stops its
    # workers), where one while the worker still loaded Dask printed a KeyboardInterrupt traceback. (Its
    # sys.argv is the command's by then; sys.orig_argv is the worker's own command line.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run() -> int:
    """Load the command line, then run it; interrupted while loading: exit 130, as :func:`~numerai_dask.cli.main`."""
    try:
        from numerai_dask.cli import main
    except KeyboardInterrupt:
        print("numerai-dask: interrupted", file=sys.stderr)
        if "--json" in sys.argv[1:]:
            print('{"status": "interrupted"}', flush=True)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
