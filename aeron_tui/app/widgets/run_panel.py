"""Run panel: what is running, how far it is, how fast, and its status — all from events."""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from aeron_tui.app.format import bar, fmt_count, fmt_duration, fmt_float, fmt_lr, line_count
from aeron_tui.app.session import RunSession

STATUS_STYLE = {
    "starting": "bold cyan",
    "running": "bold green",
    "paused": "bold yellow",
    "stopping": "bold yellow",
    "stopped": "bold blue",
    "finished": "bold green",
    "failed": "bold red",
    "crashed": "bold red",
}
STATUS_ICON = {
    "starting": "◌", "running": "●", "paused": "⏸", "stopping": "◍",
    "stopped": "■", "finished": "✔", "failed": "✖", "crashed": "✖",
}
# A live run that has said nothing for this long is flagged, never shown as merrily running.
STALE_AFTER_S = 60.0


class RunPanel(Static):
    """Trainer, profile, data, progress, speed, timing, lr, LONPT phase/domain and status."""

    DEFAULT_CSS = """
    RunPanel { height: auto; padding: 0 1; }
    """

    def __init__(self, clock: Callable[[], float], **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self._clock = clock
        self.session: RunSession | None = None
        self._key: tuple[object, ...] = ()
        self._lines = -1

    def show(self, session: RunSession | None) -> None:
        """Redraw when something visible changed (events, the elapsed second, size)."""
        self.session = session
        key: tuple[object, ...] = (None,)
        if session is not None:
            key = (session.id, session.version, session.display_status,
                   session.pending_command, int(self._elapsed(session)),
                   self._stale_seconds(session) is not None, self.size.width,
                   self.app.size.height < 32)
        if key == self._key:
            return
        self._key = key
        body = self._render_text(session)
        lines = line_count(body)
        # A relayout only when the panel's height changes (the elapsed tick does not).
        self.update(body, layout=lines != self._lines)
        self._lines = lines

    def _render_text(self, session: RunSession | None) -> Table | Text:
        if session is None or session.source == "none":
            return Text.assemble(
                ("No run yet. ", "bold"),
                ("Press ", "dim"), ("s", "bold reverse"),
                (" to start with the current setup, ", "dim"),
                ("n", "bold reverse"), (" to set one up, ", "dim"),
                ("r", "bold reverse"), (" to open a past run.", "dim"),
            )
        st = session.state
        width = max(20, self.size.width - 2 if self.size.width else 60)
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(style="dim", no_wrap=True, width=6)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")

        status = session.display_status
        head = Text()
        head.append(f"{STATUS_ICON.get(status, '?')} {status}", STATUS_STYLE.get(status, "bold"))
        if session.pending_command:
            head.append(f"  {session.pending_command} requested…", "bold yellow")
        stale = self._stale_seconds(session)
        if stale is not None:
            head.append(f"  no events for {fmt_duration(stale)}", "bold red")
        if session.source == "watch":
            head.append("  watching", "dim")
        elif session.source == "replay":
            head.append("  replay", "dim")
        elif session.process is not None and session.process.detached:
            head.append("  detached", "dim")
        if st.run_id:
            head.append(f"  {st.run_id}", "dim")
        elif session.live and st.events_seen == 0:
            head.append("  waiting for the trainer's first event (loading torch, data, model)…",
                        "dim")
        table.add_row("run", head)

        what = Text()
        what.append(st.trainer or "—", "bold")
        if st.profile:
            what.append(" · profile ")
            what.append(st.profile, "bold")
            if st.model_params:
                what.append(f" ({fmt_count(st.model_params)} params)", "dim")
        if st.preset:
            what.append(" · preset ")
            what.append(st.preset, "bold")
        if st.device:
            what.append(f" · {st.device}", "dim")
            if st.precision:
                what.append(f"/{st.precision}", "dim")
        table.add_row("what", what)
        compact = self.app.size.height < 32
        if st.data and not compact:
            table.add_row("data", Text(st.data, overflow="ellipsis"))

        prog = Text()
        total = st.total_steps
        step_txt = f"{st.global_step:,} / {total:,}" if total else f"{st.global_step:,}"
        prog.append(step_txt, "bold")
        bar_w = max(4, width - 6 - len(step_txt) - 10)
        filled, empty = bar(st.progress, bar_w)
        prog.append(" ")
        prog.append(filled, STATUS_STYLE.get(status, "green").replace("bold ", ""))
        prog.append(empty, "on grey15")
        prog.append(f" {st.progress * 100:5.1f}%")
        table.add_row("step", prog)

        speed = Text()
        if st.tokens_per_s is not None:
            speed.append(f"{fmt_count(st.tokens_per_s)} tok/s", "bold")
        elif st.samples_per_s is not None:
            speed.append(f"{fmt_count(st.samples_per_s)} samples/s", "bold")
        else:
            speed.append("— tok/s", "dim")
        speed.append(f"  elapsed {fmt_duration(self._elapsed(session))}")
        eta = st.eta_s
        if status == "running" and eta is not None:
            speed.append(f"  ETA {fmt_duration(eta)}")
        if compact:
            speed.append(f"  loss {fmt_float(st.loss)}", "bold")
            speed.append(f"  lr {fmt_lr(st.lr)}")
        table.add_row("speed", speed)

        train = Text()
        train.append(f"loss {fmt_float(st.loss)}", "bold")
        if st.best_val_loss is not None:
            train.append(f"  best val {fmt_float(st.best_val_loss)}", "green")
        train.append(f"  lr {fmt_lr(st.lr)}")
        if st.grad_norm is not None:
            train.append(f"  ‖g‖ {fmt_float(st.grad_norm, 3)}", "dim")
        if st.micro_batch is not None:
            accum = f"×{st.grad_accum}" if st.grad_accum and st.grad_accum > 1 else ""
            train.append(f"  batch {st.micro_batch}{accum}", "dim")
        if not compact:
            table.add_row("train", train)

        if st.phase or st.domain:
            lonpt = Text()
            if st.phase:
                lonpt.append("phase ")
                lonpt.append(st.phase, "bold magenta")
                if st.lr_scale is not None:
                    lonpt.append(f" (lr×{st.lr_scale:.2f})", "dim")
            if st.domain:
                lonpt.append("  domain ")
                lonpt.append(st.domain, "bold cyan")
            table.add_row("lonpt", lonpt)
        if session.exit_code not in (None, 0):
            table.add_row("exit", Text(f"trainer exited with code {session.exit_code}", "bold red"))
        elif st.last_error:
            table.add_row("error", Text(st.last_error, "red", overflow="ellipsis"))
        if session.problem_count:
            table.add_row("input", Text(
                f"{session.problem_count} unreadable event line(s) — see the event log", "yellow"))
        return table

    def _elapsed(self, session: RunSession) -> float:
        st = session.state
        # A run that is live and talking ticks with the clock; otherwise trust the events only.
        if st.started_at is not None and session.live and self._stale_seconds(session) is None \
                and session.source != "replay":
            return max(st.elapsed_s, self._clock() - st.started_at)
        return st.elapsed_s

    def _stale_seconds(self, session: RunSession) -> float | None:
        st = session.state
        if not session.live or st.last_time is None or session.source == "replay":
            return None
        if st.status == "paused":
            return None
        quiet = self._clock() - st.last_time
        return quiet if quiet > STALE_AFTER_S else None
