"""Subcommands of the ``wheelfarm`` CLI, one module each."""
