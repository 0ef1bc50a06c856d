"""The Textual console (``aeron-tui launch`` / ``aeron-tui watch``).

Importing this package imports Textual: only the launch/watch command functions do that.
"""
