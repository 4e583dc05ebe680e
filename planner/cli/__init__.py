"""Command-line interface: ``planner <command>``; see :mod:`planner.cli.main`."""
