"""Run panel: what is running, how far it is, what the trainer is doing now, how fast, and its
status — every figure from the folded events (:class:`core.runs.events.RunState`).

Liveness: the "now" row shows the trainer's activity (``loading data``, ``evaluating 12/50``,
``paused at step 7``) with a spinner and how long ago it last spoke. Trainers beat at least every
2 s, so only a silence of several heartbeats is flagged — in words that say what it may mean.
The elapsed clock comes from the run's start time in the events and ticks every second whether
events arrive or not; it never runs backwards (``RunState.elapsed_at``).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from aeron_tui.app.format import (
    bar,
    fmt_count,
    fmt_duration,
    fmt_float,
    fmt_lr,
    line_count,
    sparkline,
)
from aeron_tui.app.session import RunSession
from core.runs.events import describe_activity

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
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
# Trainers beat at least every 2 s: this much silence is several missed heartbeats.
HEARTBEAT_S = 2.0
SILENT_AFTER_S = 15.0


class RunPanel(Static):
    """Trainer, profile, data, progress, activity, speed, timing, lr, LONPT phase/domain."""

    DEFAULT_CSS = """
    RunPanel { height: auto; padding: 0 1; }
    """

    def __init__(self, clock: Callable[[], float], **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self._clock = clock
        self.session: RunSession | None = None
        self._key: tuple[object, ...] = ()
        self._lines = -1
        # The elapsed seconds of the last frame drawn (tests check it never decreases).
        self.shown_elapsed: float | None = None

    def show(self, session: RunSession | None) -> None:
        """Redraw when something visible changed (events, the elapsed second, size)."""
        self.session = session
        key: tuple[object, ...] = (None, self.size.width)
        if session is not None:
            key = (session.id, session.version, session.display_status,
                   session.pending_command, int(self._elapsed(session)), self.size.width,
                   self.app.size.height < 32)
        if key == self._key:
            return
        self._key = key
        body = self._render_text(session)
        lines = line_count(body)
        # A relayout only when the panel's height changes (the elapsed tick does not).
        self.update(body, layout=lines != self._lines)
        self._lines = lines

    # -- the rows ---------------------------------------------------------------------------------

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
        compact = self.app.size.height < 32
        elapsed = self._elapsed(session)
        self.shown_elapsed = elapsed
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(style="dim", no_wrap=True, width=5)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")

        status = session.display_status
        table.add_row("run", self._head(session, status))
        table.add_row("what", self._what(session))
        if st.data and not compact:
            table.add_row("data", Text(st.data, overflow="ellipsis"))
        table.add_row("step", self._progress(session, status, width))
        table.add_row("now", self._now(session, status, elapsed))
        table.add_row("speed", self._speed(session, status, elapsed, width, compact))
        if not compact:
            table.add_row("train", self._train(session))
        if st.phase or st.domain:
            table.add_row("lonpt", self._lonpt(session))
        if session.exit_code not in (None, 0):
            table.add_row("exit", Text(f"trainer exited with code {session.exit_code}",
                                       "bold red"))
        elif st.last_error:
            table.add_row("error", Text(st.last_error, "red", overflow="ellipsis"))
        if session.problem_count:
            table.add_row("input", Text(
                f"{session.problem_count} unreadable event line(s) — see the event log",
                "yellow"))
        return table

    def _head(self, session: RunSession, status: str) -> Text:
        st = session.state
        head = Text(overflow="ellipsis")
        head.append(f"{STATUS_ICON.get(status, '?')} {status}", STATUS_STYLE.get(status, "bold"))
        if session.pending_command:
            head.append(f"  {session.pending_command} requested…", "bold yellow")
        if session.source == "watch":
            head.append("  watching", "dim")
        elif session.source == "replay":
            head.append("  replay", "dim")
        if st.detached or (session.process is not None and session.process.detached):
            head.append("  detached", "yellow")
        if st.run_id:
            head.append(f"  {st.run_id}", "dim")
        return head

    def _what(self, session: RunSession) -> Text:
        st = session.state
        what = Text(overflow="ellipsis")
        what.append(st.trainer or "—", "bold")
        if st.profile:
            what.append(" · profile ")
            what.append(st.profile, "bold")
        if st.model_params:
            what.append(f" · {fmt_count(st.model_params)} params", "dim")
        if st.preset:
            what.append(" · preset ")
            what.append(st.preset, "bold")
        if st.device:
            what.append(f" · {st.device}", "dim")
            if st.precision:
                what.append(f"/{st.precision}", "dim")
        return what

    def _progress(self, session: RunSession, status: str, width: int) -> Text:
        st = session.state
        prog = Text(overflow="ellipsis")
        total = st.total_steps
        step_txt = f"{st.global_step:,} / {total:,}" if total else f"{st.global_step:,}"
        prog.append(step_txt, "bold")
        revised = f"  total revised: {st.total_reason}" if st.total_reason else ""
        bar_w = max(4, min(40, width - 6 - len(step_txt) - 9 - len(revised)))
        filled, empty = bar(st.progress, bar_w)
        prog.append(" ")
        prog.append(filled, STATUS_STYLE.get(status, "green").replace("bold ", ""))
        prog.append(empty, "on grey15")
        prog.append(f" {st.progress * 100:5.1f}%")
        if revised:
            prog.append(revised, "dim")
        return prog

    def _now(self, session: RunSession, status: str, elapsed: float) -> Text:
        """What the trainer is doing, a spinner while it is live, and when it last spoke."""
        st = session.state
        now = Text(overflow="ellipsis")
        if not session.live:
            now.append(describe_activity(st) if st.events_seen else status, "bold")
            if st.last_checkpoint and st.finished:
                name = st.last_checkpoint.rstrip("/").rsplit("/", 1)[-1]
                now.append(f" · last checkpoint {name}", "dim")
            return now
        if session.source != "replay":
            now.append(SPINNER[int(elapsed) % len(SPINNER)] + " ", "bold cyan")
        if st.events_seen == 0:
            waited = self._clock() - session.created_at
            now.append("waiting for the trainer's first event", "bold")
            now.append(f" (starting Python, loading torch) {fmt_duration(waited)}", "dim")
            return now
        now.append(describe_activity(st), "bold")
        if session.source == "replay":
            return now
        quiet = st.quiet_s(self._clock())
        if quiet is None:
            return now
        if st.last_heartbeat_time is None:
            # A trainer that sends no heartbeats: say how old the news is, raise no alarm.
            if quiet >= 10:
                now.append(f" · last event {fmt_duration(quiet)} ago", "dim")
            return now
        if quiet > SILENT_AFTER_S and not st.paused:
            # The news first (it must survive 80 columns), then what it may mean.
            beats = int(quiet // HEARTBEAT_S)
            silent = Text(overflow="ellipsis")
            if session.source != "replay":
                silent.append(SPINNER[int(elapsed) % len(SPINNER)] + " ", "bold cyan")
            silent.append(f"⚠ no heartbeat for {fmt_duration(quiet)}", "bold yellow")
            silent.append(f" (stuck? starved of CPU? it beats every {HEARTBEAT_S:.0f} s; "
                          f"~{beats} missed) · last: {describe_activity(st)}", "yellow")
            return silent
        now.append(f" · heartbeat {fmt_duration(quiet)} ago", "dim")
        return now

    def _speed(self, session: RunSession, status: str, elapsed: float, width: int,
               compact: bool) -> Text:
        st = session.state
        speed = Text(overflow="ellipsis")
        if st.tokens_per_s is not None:
            speed.append(f"{fmt_count(st.tokens_per_s)} tok/s", "bold")
            history = session.throughput_history
            if len(history) > 1:
                spark_w = max(0, min(16, width // 6))
                speed.append(" ")
                speed.append(sparkline(history, spark_w), "cyan")
        elif st.samples_per_s is not None:
            speed.append(f"{fmt_count(st.samples_per_s)} samples/s", "bold")
        else:
            speed.append("— tok/s", "dim")
        speed.append(f"  elapsed {fmt_duration(elapsed)}")
        if status in ("running", "paused") and session.source != "replay":
            eta = st.eta_at(self._clock())
            if eta is not None:
                speed.append(f"  ETA {fmt_duration(eta)}")
                if st.paused:
                    speed.append(" (paused)", "dim")
        if compact:
            speed.append(f"  loss {fmt_float(st.loss)}", "bold")
            speed.append(f"  lr {fmt_lr(st.lr)}")
        return speed

    def _train(self, session: RunSession) -> Text:
        st = session.state
        train = Text(overflow="ellipsis")
        train.append(f"loss {fmt_float(st.loss)}", "bold")
        if st.best_val_loss is not None:
            at = f" @{st.best_val_step:,}" if st.best_val_step is not None else ""
            train.append(f"  best val {fmt_float(st.best_val_loss)}{at}", "green")
        train.append(f"  lr {fmt_lr(st.lr)}")
        if st.grad_norm is not None:
            train.append(f"  ‖g‖ {fmt_float(st.grad_norm, 3)}", "dim")
        if st.micro_batch is not None:
            accum = f"×{st.grad_accum}" if st.grad_accum and st.grad_accum > 1 else ""
            train.append(f"  batch {st.micro_batch}{accum}", "dim")
        return train

    def _lonpt(self, session: RunSession) -> Text:
        st = session.state
        lonpt = Text(overflow="ellipsis")
        if st.phase:
            lonpt.append("phase ")
            lonpt.append(st.phase, "bold magenta")
            if st.lr_scale is not None:
                lonpt.append(f" (lr×{st.lr_scale:.2f})", "dim")
        if st.domain:
            lonpt.append("  domain ")
            lonpt.append(st.domain, "bold cyan")
            best = st.domain_best.get(st.domain)
            if best is not None:
                # Named apart from the run's best: a domain's own best is a different figure.
                lonpt.append(f" (domain best {fmt_float(best)})", "dim")
        return lonpt

    # -- time -------------------------------------------------------------------------------------

    def _elapsed(self, session: RunSession) -> float:
        st = session.state
        if session.source == "replay":
            # A replay's clock is the recorded one: the time of the newest event replayed.
            return st.elapsed_at(st.last_time) if st.last_time is not None else 0.0
        return st.elapsed_at(self._clock())
