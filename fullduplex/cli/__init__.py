"""The ``fullduplex`` command line: ``fullduplex <command> ...`` (see :mod:`fullduplex.cli.main`).

Each command lives in its own module exposing ``register(subparsers)``, which adds an ``argparse`` subparser and
sets ``func`` (``args -> int`` exit status) as its default; :data:`fullduplex.cli.main.COMMANDS` lists them.
"""
