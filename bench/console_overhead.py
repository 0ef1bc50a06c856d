"""Console overhead: what watching a run in the console costs the run, and how snappy it is.

    .venv/bin/python bench/console_overhead.py [--steps 40] [--rounds 2] [--profile tiny] [--threads N]

Measures, on the same run configuration (one run.toml: the simple trainer, a size profile with a
short sequence length, the sample corpus, a step event every 2 steps, no evals/checkpoints):
1. trainer tokens/s with the console attached (``aeron-tui launch --start`` in a pseudo-terminal,
   drawing for real) vs. headless (``aeron-tui train ... --quiet``), rounds interleaved A/B;
   ratio = attached / headless (target ≥ 0.95); and, because wall-clock tokens/s on a shared
   machine moves with everyone else's load, the trainer process's own CPU time per step in
   both modes (psutil), whose ratio says whether the console slows the trainer's work itself,
   and its run-queue wait per step (schedstat: time runnable but without a core). Both
   trainers run in their own session (the kernel's autogroup unit), as a typed command would;
2. the console process's own CPU use while it watches that run (children excluded);
3. key press → screen update latency while training, with the Textual Pilot (target < 100 ms);
4. time from starting ``aeron-tui launch`` to its first complete frame (target < 1.5 s).

Every figure comes from the run's own events.jsonl or from the OS (psutil); nothing is assumed.
The machine is shared: run it when it is quiet, or read the figures as noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import pty
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
AERON = [sys.executable, "-m", "aeron_tui"]
FIRST_FRAME_MARK = b"Wizard"  # the footer's last key: present once the first full frame is drawn


# ------------------------------------------------------------------------------ pty helpers


def _spawn_pty(argv: list[str], env: dict[str, str], cols: int = 120, rows: int = 40
               ) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                            cwd=ROOT, start_new_session=True, close_fds=True)
    os.close(slave)
    return proc, master


def _read_until(master: int, mark: bytes, timeout: float, buf: bytearray) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.02)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return False
            buf += chunk
            if mark in buf:
                return True
    return False


def _drain(master: int) -> None:
    """Keep reading the console's output so it never blocks on a full pty buffer."""
    while True:
        ready, _, _ = select.select([master], [], [], 0)
        if not ready:
            return
        try:
            if not os.read(master, 65536):
                return
        except OSError:
            return


def _quit(proc: subprocess.Popen[bytes], master: int, keys: bytes = b"q") -> None:
    try:
        os.write(master, keys)
    except OSError:
        pass
    # Keep reading while it exits: a console blocked on a full pty buffer never sees the key.
    end = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < end:
        _drain(master)
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
    os.close(master)


# ------------------------------------------------------------------------------ measurements


def first_frame_times(env: dict[str, str], rounds: int) -> tuple[list[float], list[float]]:
    """(wall seconds, console CPU seconds) from exec of ``aeron-tui launch`` to the first
    complete frame on the terminal. The CPU seconds are what the start costs by itself; on a
    loaded machine the wall time adds the wait for a core."""
    import psutil

    times, cpu = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        proc, master = _spawn_pty([*AERON, "launch"], env)
        console = psutil.Process(proc.pid)
        buf = bytearray()
        ok = _read_until(master, FIRST_FRAME_MARK, 30, buf)
        t1 = time.perf_counter()
        c = console.cpu_times()
        _quit(proc, master)
        if not ok:
            raise RuntimeError(f"no first frame; output: {bytes(buf[-500:])!r}")
        times.append(t1 - t0)
        cpu.append(c.user + c.system)
    return times, cpu


def _tokens_per_s(run_dir: Path) -> float:
    """Mean tokens/s over the run's step events, skipping the first (warm-up) one."""
    rates = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "step" and event.get("tokens_per_s"):
            rates.append(float(event["tokens_per_s"]))
    if len(rates) < 2:
        raise RuntimeError(f"{run_dir}: too few step events ({len(rates)})")
    return statistics.mean(rates[1:])


def _median_step_seconds(run_dir: Path | None) -> float | None:
    """Median wall seconds per optimizer step between consecutive step events."""
    if run_dir is None or not (run_dir / "events.jsonl").exists():
        return None
    points = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line) if line.strip() else {}
        if event.get("type") == "step":
            points.append((event["global_step"], event["time"]))
    gaps = [(t1 - t0) / (s1 - s0)
            for (s0, t0), (s1, t1) in zip(points, points[1:], strict=False) if s1 > s0]
    return statistics.median(gaps) if gaps else None


def run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved RunConfig the trainer recorded in run_started (paths and ids left out)."""
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "run_started":
            config = dict(event.get("config") or {})
            for key in ("run_dir", "run_id"):
                config.pop(key, None)
            config["model_params"] = event.get("model_params")
            return config
    raise RuntimeError(f"{run_dir}: no run_started event")


def write_bench_config(path: Path, profile: str, steps: int, data: str) -> Path:
    """The one run configuration both modes train (short sequences keep a round to minutes)."""
    path.write_text(
        f'trainer = "simple"\nprofile = "{profile}"\ndata = "{data}"\nsteps = {steps}\n'
        "seq_len = 64\nmicro_batch = 4\nlog_every = 2\neval_every = 100000\n"
        "checkpoint_every = 100000\nseed = 1\n", encoding="utf-8")
    return path


_REFERENCE_CONFIG: dict[str, Any] = {}


def same_config_as(run_dir: Path) -> None:
    """Both modes must train exactly the same configuration, or the ratio means nothing."""
    config = run_config(run_dir)
    if not _REFERENCE_CONFIG:
        _REFERENCE_CONFIG.update(config)
        return
    diff = {k: (_REFERENCE_CONFIG.get(k), config.get(k))
            for k in set(config) | set(_REFERENCE_CONFIG)
            if _REFERENCE_CONFIG.get(k) != config.get(k)}
    if diff:
        raise RuntimeError(f"{run_dir}: run configuration differs between modes: {diff}")


class TrainerMeter:
    """The trainer process's own CPU seconds per optimizer step, between its first and its last
    step event (so imports, data loading and the final save are left out, as in tokens/s).

    Polled: each poll reads the trainer's CPU time (psutil) and the newest ``global_step`` in
    its events.jsonl. CPU time does not depend on how busy the shared machine is the way
    wall-clock tokens/s does; the error is one poll interval of CPU at each end.
    """

    def __init__(self, pid: int, events: Path) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.events = events
        self._offset = 0
        self._partial = ""
        self.step: int | None = None
        self.finished = False
        self.first: tuple[int, float, float, float] | None = None
        self.last: tuple[int, float, float, float] | None = None

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def _waited(self) -> float:
        """Seconds the trainer's threads sat runnable in the run queue (Linux schedstat)."""
        total = 0.0
        try:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                fields = (task / "schedstat").read_text().split()
                total += int(fields[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return float("nan")
        return total

    def poll(self) -> None:
        try:
            cpu: float | None = self._cpu()
            waited = self._waited()
        except Exception:  # noqa: BLE001 - the trainer exited: keep the last good sample
            cpu, waited = None, float("nan")
        try:
            with open(self.events, encoding="utf-8") as fh:
                fh.seek(self._offset)
                text = fh.read()
                self._offset = fh.tell()
        except OSError:
            return
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        before = self.step
        for line in lines:
            if '"type":"step"' in line:
                self.step = int(json.loads(line)["global_step"])
            elif '"type":"run_finished"' in line:
                self.finished = True
        if cpu is None or self.step is None or self.step == before:
            # Samples are taken only when a new step event shows up, so the work after the
            # last step (final checkpoint, cleanup) is never charged to the steps.
            return
        now = time.monotonic()
        if self.first is None:
            self.first = (self.step, cpu, waited, now)
        self.last = (self.step, cpu, waited, now)

    def per_step(self) -> tuple[float, float, float]:
        """(CPU, run-queue wait, wall) seconds per step between the first and last step seen."""
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            raise RuntimeError(f"{self.events}: too few step events to time the trainer's CPU")
        steps = self.last[0] - self.first[0]
        return tuple((b - a) / steps for a, b in zip(self.first[1:], self.last[1:], strict=True))  # type: ignore[return-value]

    def cpu_per_step(self) -> float:
        return self.per_step()[0]


def headless_run(env: dict[str, str], args: list[str], run_dir: Path
                 ) -> tuple[float, tuple[float, float, float]]:
    """(tokens/s, trainer (CPU, run-queue wait, wall) s per step) for ``aeron-tui train ...
    --quiet``."""
    from aeron_tui.launcher import trainer_env

    # Its own session, like the console's trainer child (and like `aeron-tui train` typed in a
    # terminal): with the kernel's autogroup scheduling a session is the unit that shares the
    # CPU, so a trainer left in this script's session would compete with whatever else runs
    # in it and the A/B comparison would be biased against headless (measured: 1.1-2× here).
    proc = subprocess.Popen([*AERON, "train", "simple", *args, "--run-dir", str(run_dir),
                             "--quiet"], env=trainer_env(env), cwd=ROOT,
                            stdout=subprocess.DEVNULL, start_new_session=True)
    meter = TrainerMeter(proc.pid, run_dir / "events.jsonl")
    while proc.poll() is None:
        meter.poll()
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"headless run failed (exit code {proc.returncode})")
    same_config_as(run_dir)
    return _tokens_per_s(run_dir), meter.per_step()


def attached_run(env: dict[str, str], args: list[str], runs_root: Path
                 ) -> tuple[float, float, tuple[float, float, float]]:
    """(tokens/s, console CPU %, trainer (CPU, run-queue wait, wall) s per step) for a run
    started by ``aeron-tui launch --start`` in a pty."""
    import psutil

    before = set(runs_root.glob("*")) if runs_root.exists() else set()
    proc, master = _spawn_pty([*AERON, "launch", "--start", "--trainer", "simple", *args,
                               "--runs-root", str(runs_root)], env)
    console = psutil.Process(proc.pid)
    cpu0 = wall0 = None
    run_dir = None
    meter: TrainerMeter | None = None
    deadline = time.monotonic() + 1800
    try:
        while time.monotonic() < deadline:
            _drain(master)
            time.sleep(0.05)
            if run_dir is None:
                new = [p for p in runs_root.glob("*") if p not in before]
                run_dir = new[0] if new else None
                continue
            events = run_dir / "events.jsonl"
            if meter is None:
                trainers = [c for c in console.children() if "train" in c.cmdline()]
                meter = TrainerMeter(trainers[0].pid, events) if trainers else None
            if meter is None:
                continue
            meter.poll()  # reads only what is new: as light as the headless loop
            if cpu0 is None and meter.step is not None:
                t = console.cpu_times()
                cpu0, wall0 = t.user + t.system, time.monotonic()
            if meter.finished:
                break
        else:
            raise RuntimeError("attached run did not finish")
        t = console.cpu_times()
        cpu_pct = 100.0 * (t.user + t.system - (cpu0 or 0.0)) / max(1e-9, time.monotonic()
                                                                  - (wall0 or 0.0))
    finally:
        _quit(proc, master, b"q")
    assert run_dir is not None
    if meter is None:
        raise RuntimeError("never saw the console's trainer child process")
    same_config_as(run_dir)
    return _tokens_per_s(run_dir), cpu_pct, meter.per_step()


def key_latency(env: dict[str, str], config: Path, presses: int = 20) -> dict[str, float]:
    """Key → first frame showing its effect, while a real run trains (Textual, headless driver).

    The key goes in through the driver exactly as a terminal key would; the time stops when
    the app writes the first frame that contains the change (the app's frame writer is wrapped
    to timestamp every frame). Pilot's own idle-waiting is not part of the figure.
    """
    # The trainer inherits this process's environment: same home and thread count as the runs.
    os.environ.update({k: v for k, v in env.items()
                       if k.startswith("AERON_TUI") or k == "OMP_NUM_THREADS"})
    from textual import events

    from aeron_tui.app.app import AeronConsole, ConsoleOptions
    from aeron_tui.app.runsetup import RunSetup
    from aeron_tui.app.widgets.loss_chart import LossChart

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    table = tomllib.loads(config.read_text())
    setup = RunSetup(trainer="simple", profile=table.pop("profile"), data=table.pop("data"),
                     steps=100000, overrides={k: v for k, v in table.items()
                                              if k not in ("trainer", "steps")})

    async def run() -> dict[str, float]:
        app = AeronConsole(ConsoleOptions(setup=setup, runs_root=Path(env["AERON_TUI_HOME"])
                                          / "latency-runs"))
        frames: list[tuple[float, bool, str | None]] = []
        toggles: list[float] = []
        async with app.run_test(size=(120, 40)) as pilot:
            chart = app.dashboard.query_one(LossChart)
            write_frame = app._display

            def timed_display(screen: Any, renderable: Any) -> None:
                write_frame(screen, renderable)
                session = app.session
                frames.append((time.perf_counter(), chart.smoothing,
                               session.pending_command if session else None))

            app._display = timed_display  # type: ignore[method-assign]

            async def press_and_wait(key: str, done: Any) -> float:
                t0 = time.perf_counter()
                start = len(frames)
                assert app._driver is not None
                app._driver.send_message(events.Key(key, key))
                while True:
                    await asyncio.sleep(0.001)
                    for t, smoothing, pending in frames[start:]:
                        if done(smoothing, pending):
                            return t - t0

            await pilot.press("s")
            end = time.monotonic() + 900
            while time.monotonic() < end and (app.session is None
                                              or app.session.state.global_step < 3):
                await pilot.pause(0.1)
            app.render_now()
            await pilot.pause()
            assert chart.train_points > 0, "no step events reached the console"
            for _ in range(presses):
                want = not chart.smoothing
                toggles.append(await press_and_wait("m", lambda sm, _p, w=want: sm == w))
                await asyncio.sleep(0.2)
            pause_shown = await press_and_wait("p", lambda _s, pending: pending == "pause")
            t0 = time.perf_counter()
            while app.session is not None and app.session.state.status != "paused":
                await asyncio.sleep(0.01)
            paused = time.perf_counter() - t0 + pause_shown
            step_s = _median_step_seconds(app.session.run_dir) if app.session else None
            if app.session is not None and app.session.process is not None:
                app.session.process.shutdown(grace=60)
        toggles.sort()
        return {
            "toggle_median_ms": 1000 * statistics.median(toggles),
            "toggle_p95_ms": 1000 * toggles[int(0.95 * (len(toggles) - 1))],
            "pause_shown_ms": 1000 * pause_shown,
            "paused_confirmed_ms": 1000 * paused,
            "step_ms": 1000 * step_s if step_s else float("nan"),
        }

    return asyncio.run(run())


# ------------------------------------------------------------------------------ main


def _load() -> str:
    """The 1/5/15-minute load averages: how busy the shared machine was."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--skip-runs", action="store_true", help="only startup and latency")
    ap.add_argument("--frame-rounds", type=int, default=5, help="launches timed to first frame")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for the trainer in both modes (1 steadies timings "
                    "on a loaded machine)")
    args = ap.parse_args()

    load_before = _load()
    home = Path(tempfile.mkdtemp(prefix="aeron-bench-console-"))
    env = dict(os.environ, AERON_TUI_HOME=str(home), TERM="xterm-256color")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    from core.data.sample import ensure_sample_corpus

    os.environ["AERON_TUI_HOME"] = str(home)
    data = str(ensure_sample_corpus().styles)
    config = write_bench_config(home / "bench-run.toml", args.profile, args.steps, data)
    run_args = ["--config", str(config)]
    rows: list[tuple[str, str, str]] = []
    try:
        frames, frame_cpu = first_frame_times(env, rounds=args.frame_rounds)
        rows.append((f"launch → first frame (median of {args.frame_rounds})",
                     f"{statistics.median(frames):.2f} s",
                     "target < 1.5 s; each: " + ", ".join(f"{t:.2f}" for t in frames)))
        rows.append(("  console CPU time to first frame (median)",
                     f"{statistics.median(frame_cpu):.2f} s",
                     "the start's own cost, without the wait for a core"))
        if not args.skip_runs:
            headless, attached, cpu, h_cpu, a_cpu, h_wait, a_wait = [], [], [], [], [], [], []

            def run_headless(r: int) -> None:
                tps, per_step = headless_run(env, run_args, home / f"headless-{r}")
                headless.append(tps)
                h_cpu.append(per_step[0])
                h_wait.append(per_step[1])

            for r in range(args.rounds):
                # ABBA order: a drift in the machine's background load hits both modes alike.
                if r % 2 == 0:
                    run_headless(r)
                tps, pct, per_step = attached_run(env, run_args, home / "console-runs")
                attached.append(tps)
                cpu.append(pct)
                a_cpu.append(per_step[0])
                a_wait.append(per_step[1])
                if r % 2 == 1:
                    run_headless(r)
                print(f"round {r + 1}: headless {headless[-1]:.0f} tok/s "
                      f"({1000 * h_cpu[-1]:.0f} ms trainer CPU/step, {1000 * h_wait[-1]:.1f} ms "
                      f"waiting for a core), console-attached {attached[-1]:.0f} tok/s "
                      f"({1000 * a_cpu[-1]:.0f} ms CPU/step, {1000 * a_wait[-1]:.1f} ms waiting), "
                      f"console CPU {cpu[-1]:.1f} %, load {_load()}", flush=True)
            h, a = statistics.median(headless), statistics.median(attached)
            ratios = [x / y for x, y in zip(attached, headless, strict=True)]
            rows.append(("tokens/s headless (median)", f"{h:,.1f}", "reference"))
            rows.append(("tokens/s console attached (median)", f"{a:,.1f}",
                         f"ratio {a / h:.3f}, median of the per-round (paired) ratios "
                         f"{statistics.median(ratios):.3f} (target ≥ 0.95); per round "
                         + ", ".join(f"{r:.2f}" for r in ratios)))
            hc, ac = statistics.median(h_cpu), statistics.median(a_cpu)
            rows.append(("trainer CPU per step, headless (median)", f"{1000 * hc:.1f} ms",
                         "process CPU time: load-independent"))
            rows.append(("trainer CPU per step, console attached (median)", f"{1000 * ac:.1f} ms",
                         f"throughput ratio by CPU time {hc / ac:.3f}; per round "
                         + ", ".join(f"{x / y:.2f}" for x, y in zip(h_cpu, a_cpu, strict=True))))
            rows.append(("trainer run-queue wait per step, headless / attached (median)",
                         f"{1000 * statistics.median(h_wait):.1f} / "
                         f"{1000 * statistics.median(a_wait):.1f} ms",
                         "runnable but waiting for a core (Linux schedstat): what a busy "
                         "machine and the console's own CPU cost the trainer"))
            share = statistics.mean(cpu) / (100.0 * (os.cpu_count() or 1))
            rows.append(("console CPU while watching (mean)", f"{statistics.mean(cpu):.1f} %",
                         f"of one core = {share:.1%} of the machine: the most it can take "
                         f"from a CPU-bound trainer (ratio ≥ {1 - share:.3f})"))
        lat = key_latency(env, config)
        rows.append(("key m → frame with the chart redrawn (median of 20)",
                     f"{lat['toggle_median_ms']:.1f} ms", "target < 100 ms"))
        rows.append(("key m → frame with the chart redrawn (p95)",
                     f"{lat['toggle_p95_ms']:.1f} ms", "target < 100 ms"))
        rows.append(("key p → frame showing 'pause requested'", f"{lat['pause_shown_ms']:.1f} ms",
                     "target < 100 ms"))
        rows.append(("key p → trainer confirms paused", f"{lat['paused_confirmed_ms']:.0f} ms",
                     "one optimizer step at most (the trainer checks its control channel "
                     f"between steps; a step took {lat['step_ms']:.0f} ms wall, median)"))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    threads = f", OMP_NUM_THREADS={args.threads}" if args.threads else ""
    print(f"\nconsole_overhead (profile {args.profile}, seq_len 64, micro-batch 4, {args.steps} steps, "
          f"{args.rounds} round(s), {os.cpu_count()} CPUs{threads}; shared machine — noisy; "
          f"load average {load_before} before, {_load()} after)")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>12}  {note}")


if __name__ == "__main__":
    main()
