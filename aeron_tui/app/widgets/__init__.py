"""Dashboard widgets, one per module. Each renders a :class:`~aeron_tui.app.session.RunSession`."""
