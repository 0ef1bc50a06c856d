"""Messages posted from worker threads to the UI thread (``post_message`` is thread-safe)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.message import Message

from core.runs.events import ParseProblem

if TYPE_CHECKING:
    from profiles.hardware import HardwareInfo
    from profiles.sampler import HardwareSample


class EventsArrived(Message):
    """A coalesced batch of events for session ``session_id`` (stale sessions are ignored)."""

    def __init__(self, session_id: int, items: list[dict[str, Any] | ParseProblem]) -> None:
        super().__init__()
        self.session_id = session_id
        self.items = items


class TrainerExited(Message):
    """The child process of session ``session_id`` exited with ``code``."""

    def __init__(self, session_id: int, code: int | None, stderr_tail: list[str]) -> None:
        super().__init__()
        self.session_id = session_id
        self.code = code
        self.stderr_tail = stderr_tail


class HardwareSampled(Message):
    """A new hardware sample; only the newest matters, so queued ones are replaced."""

    def __init__(self, sample: HardwareSample) -> None:
        super().__init__()
        self.sample = sample

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HardwareSampled)


class HardwareProbed(Message):
    """The one-off hardware probe finished (names, core counts, NVML status)."""

    def __init__(self, info: HardwareInfo | None, error: str | None = None) -> None:
        super().__init__()
        self.info = info
        self.error = error
