"""Trainer-process view beside the hardware: the trainer's own CPU % and resident memory (by
pid, through psutil), and on CUDA its allocated / reserved / peak memory from the step events'
``memory`` field."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from aeron_tui.app.format import fmt_bytes, fmt_gib, line_count
from aeron_tui.app.procwatch import ProcessSample
from aeron_tui.app.session import RunSession


class ProcessPanel(Static):
    """One or two rows: ``TRN pid 123 · CPU 187% · RSS 1.2 GiB`` (+ CUDA memory)."""

    DEFAULT_CSS = """
    ProcessPanel { height: auto; padding: 0 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self._key: tuple[object, ...] = ()
        self._lines = -1

    def show(self, session: RunSession | None, sample: ProcessSample | None) -> None:
        st = session.state if session is not None else None
        memory = st.memory if st is not None and st.device.startswith("cuda") else {}
        key = (session.id if session else None, session.live if session else None,
               sample, tuple(sorted(memory.items())), self.size.width)
        if key == self._key:
            return
        self._key = key
        self.display = session is not None and session.source != "none"
        body = self._body(session, sample, memory)
        lines = line_count(body)
        self.update(body, layout=lines != self._lines)
        self._lines = lines

    def _body(self, session: RunSession | None, sample: ProcessSample | None,
              memory: dict[str, object]) -> Table:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(no_wrap=True, style="bold", width=4)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_row("TRN", self._process_line(session, sample))
        if memory:
            cuda = Text(overflow="ellipsis")
            cuda.append("CUDA ", "bold")
            cuda.append(f"alloc {fmt_gib(_num(memory.get('allocated')))} · "
                        f"reserved {fmt_gib(_num(memory.get('reserved')))} · "
                        f"peak {fmt_gib(_num(memory.get('peak')))} GiB")
            table.add_row("", cuda)
        return table

    @staticmethod
    def _process_line(session: RunSession | None, sample: ProcessSample | None) -> Text:
        line = Text(overflow="ellipsis")
        if session is None:
            return line
        if session.source == "replay":
            line.append("replay: no trainer process", "dim")
        elif sample is None:
            why = "not running" if not session.live else "pid unknown (not on this machine?)"
            line.append(f"trainer {why}", "dim")
        elif not sample.alive:
            line.append(f"trainer pid {sample.pid} exited", "dim")
        elif sample.error:
            line.append(f"trainer pid {sample.pid}: {sample.error}", "yellow")
        else:
            line.append(f"trainer pid {sample.pid}", "dim")
            cpu = "…" if sample.cpu_percent is None else f"{sample.cpu_percent:.0f}%"
            line.append("  CPU ")
            line.append(cpu, "bold")
            line.append("  RSS ")
            line.append(fmt_bytes(sample.rss), "bold")
            if sample.processes > 1:
                line.append(f"  ({sample.processes} processes)", "dim")
        return line


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
