"""Hardware panel: each GPU's name, VRAM bar, utilisation, temperature, power; CPU and RAM.

Static facts (names, core count) come from one ``profiles.hardware.probe`` run in a worker;
live figures from the ``profiles.sampler`` thread. A CPU-only machine says so plainly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from aeron_tui.app.format import bar, fmt_gib, line_count

if TYPE_CHECKING:
    from profiles.hardware import HardwareInfo
    from profiles.sampler import HardwareSample


def _level_style(fraction: float) -> str:
    return "red" if fraction >= 0.9 else "yellow" if fraction >= 0.7 else "green"


class HardwarePanel(Static):
    """Renders the latest hardware sample (and the probe's names)."""

    DEFAULT_CSS = """
    HardwarePanel { height: auto; padding: 0 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(Text("probing hardware…", style="dim"), **kwargs)  # type: ignore[arg-type]
        self.info: HardwareInfo | None = None
        self.sample: HardwareSample | None = None
        self._lines = -1

    def show(self, info: HardwareInfo | None, sample: HardwareSample | None) -> None:
        self.info = info
        self.sample = sample
        self._redraw()

    def on_resize(self) -> None:
        if self.info is not None or self.sample is not None:
            self._redraw()

    def _redraw(self) -> None:
        body = self._render_table()
        lines = line_count(body)
        self.update(body, layout=lines != self._lines)
        self._lines = lines

    def _render_table(self) -> Table | Text:
        info, sample = self.info, self.sample
        if info is None and sample is None:
            return Text("probing hardware…", style="dim")
        width = max(30, (self.size.width - 2) if self.size.width else 50)
        bar_w = max(6, min(30, width - 26))
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(no_wrap=True, style="bold", width=4)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        names = {g.index: g.name for g in info.gpus} if info else {}
        gpus = list(sample.gpus) if sample else []
        if not gpus:
            reason = (info.nvml_error if info else None) or (sample.nvml_error if sample else None)
            line = Text("CPU only — no NVIDIA GPU", style="bold yellow")
            if reason:
                line.append(f" ({reason})", "dim")
            table.add_row("GPU", line)
        # Short terminals: one line per GPU (bar + figures); tall ones add the name line.
        compact = self.app.size.height < 32 or len(gpus) > 2
        for g in gpus:
            name = names.get(g.index, f"GPU {g.index}")
            label = f"G{g.index}"
            if g.error:
                table.add_row(label, Text(f"{name}: unavailable ({g.error})", style="bold red"))
                continue
            stats = Text()
            stats.append(f"{g.gpu_util if g.gpu_util is not None else '—':>3}%")
            if g.temperature is not None:
                stats.append(f" {g.temperature}°C", "red" if g.temperature >= 85 else "")
            if g.power_w is not None:
                stats.append(f" {g.power_w:.0f}W")
            if not compact:
                head = Text(name, style="bold")
                head.append("  ")
                head.append_text(stats)
                table.add_row(label, head)
            mem = Text()
            if g.memory_total:
                frac = (g.memory_used or 0) / g.memory_total
                filled, empty = bar(frac, bar_w)
                mem.append(filled, _level_style(frac))
                mem.append(empty, "on grey15")
                mem.append(f" {fmt_gib(g.memory_used)}/{fmt_gib(g.memory_total)} GiB")
            if compact:
                mem.append(" ")
                mem.append_text(stats)
            table.add_row("" if not compact else label, mem)
        if sample is not None:
            cpu = Text()
            frac = sample.cpu_percent / 100.0
            filled, empty = bar(frac, bar_w)
            cpu.append(filled, _level_style(frac))
            cpu.append(empty, "on grey15")
            cpu.append(f" {sample.cpu_percent:4.0f}%")
            if info is not None and info.cpu.logical_cores:
                cpu.append(f"  {info.cpu.logical_cores} threads", "dim")
            table.add_row("CPU", cpu)
            ram = Text()
            frac = sample.ram_used / sample.ram_total if sample.ram_total else 0.0
            filled, empty = bar(frac, bar_w)
            ram.append(filled, _level_style(frac))
            ram.append(empty, "on grey15")
            ram.append(f" {fmt_gib(sample.ram_used)}/{fmt_gib(sample.ram_total)} GiB")
            table.add_row("RAM", ram)
        return table
