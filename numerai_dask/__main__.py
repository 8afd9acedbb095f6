"""The ``numerai-dask`` command (and ``python -m numerai_dask``): :func:`numerai_dask.cli.main`, loaded so that a
Ctrl-C while its libraries load is the same one line as later, not a traceback."""

import sys


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
