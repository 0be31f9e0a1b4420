"""The daemon's lifecycle, in one place: start, READY, reload on SIGHUP, stop on SIGTERM.

Signals only set events; :func:`run` awaits them. Every sd_notify call lives here, beside
the lifecycle it reports (docs/operations.md, systemd).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .addresses import Address, host_port
from .audit import config_warnings
from .config import Config
from .errors import ConfigError
from .limits import raise_open_files_limit
from .logs import setup_logging
from .notify import Notifier, watchdog_loop, watchdog_period
from .runtime import data_path, event_loop_runner
from .supervisor import Supervisor
from .tls import check_tls, read_and_check

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .exporter import MetricsServer

log = logging.getLogger("aiowstunnel.daemon")

#: How often STATUS= is refreshed (only sent when the line changed).
STATUS_PERIOD = 1.0
#: The "running" log line waits this long at most for every tunnel's first connection
#: attempt (a blackholed server takes connect_timeout), so that it says how many are up.
FIRST_STATUS_WAIT = 10.0


class Daemon:
    """One run of ``aiowstunnel run``: a supervisor, its metrics, and systemd reporting."""

    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        self.config = config
        self.supervisor = Supervisor(config)
        self.notifier = Notifier()
        self.metrics: MetricsServer | None = None
        self._metrics_at: Address | None = None  # where the exporter is bound, if anywhere
        # Built with the first exporter: a daemon without [metrics] never loads
        # prometheus_client (about 2.3 MB of a 33 MB daemon, docs/performance.md, round 4).
        self.registry: CollectorRegistry | None = None
        self.reload_requested = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self._status = ""
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        loop.add_signal_handler(signal.SIGTERM, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_requested.set)
        try:
            await self._start_metrics(self.config)
            await self.supervisor.start()
        except (OSError, ConfigError) as exc:
            log.error("cannot start: %s", exc)
            await self._shutdown(0.0)
            return 1
        self.supervisor.reload_timestamp = time.time()  # the first load is a load
        await self.supervisor.listeners_bound()
        self._tasks.append(loop.create_task(self._report_status()))
        period = watchdog_period()
        if period:
            self._tasks.append(loop.create_task(watchdog_loop(self.notifier, period)))
        self.notifier.notify("READY=1", STATUS=self._refresh_status())
        self._tasks.append(loop.create_task(self._first_status()))

        while not self.stop_requested.is_set():
            stop = loop.create_task(self.stop_requested.wait())
            reload = loop.create_task(self.reload_requested.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self.reload_requested.is_set() and not self.stop_requested.is_set():
                self.reload_requested.clear()
                await self.reload()

        # First /healthz fails, so that a balancer sends nothing new here; then (after
        # stop_grace, the balancer's time to see it) GOAWAY and the drain.
        self.supervisor.stopping = True
        self.notifier.notify("STOPPING=1", STATUS="stopping: draining open streams")
        if self.config.stop_grace > 0:
            log.info(
                "stopping: /healthz fails; serving on for %g s (stop_grace) before GOAWAY",
                self.config.stop_grace,
            )
            await asyncio.sleep(self.config.stop_grace)
        log.info("stopping: draining open streams for up to %g s", self.config.shutdown_timeout)
        open_streams, cut = await self._shutdown(self.config.shutdown_timeout)
        if open_streams:
            log.info(
                "stopped: %d stream%s open at SIGTERM, %d finished, %d reset at the drain timeout",
                open_streams,
                "" if open_streams == 1 else "s",
                open_streams - cut,
                cut,
            )
        else:
            log.info("stopped: no stream was open")
        return 0

    async def reload(self) -> None:
        """Re-read the file; apply it as a diff, or keep the old config if it is invalid."""
        self.notifier.reloading()
        log.info("reloading %s", self.path)
        try:
            new, warnings = read_and_check(self.path)
            _log_warnings(warnings, self.path)
            await self._start_metrics(new)
            await self.supervisor.reload(new)
        except (ConfigError, OSError) as exc:
            self.supervisor.reload_ok = False
            log.error("reload failed, still running the previous configuration: %s", exc)
        else:
            self.config = new
            self.supervisor.reload_ok = True
            self.supervisor.reload_timestamp = time.time()
            setup_logging(new.log.level)
        self.notifier.notify("READY=1", STATUS=self._refresh_status())

    async def _start_metrics(self, config: Config) -> None:
        """Bind the exporter where ``config`` says, if that is not where it is now.

        The new one is bound before the old one closes, so a failed bind (OSError) leaves
        the running exporter serving. What is bound is tracked here, not inferred from the
        last config, which a failed reload leaves behind.
        """
        wanted = config.metrics.listen if config.metrics.enabled else None
        if wanted == self._metrics_at:
            return
        new = None
        if wanted is not None:
            from .exporter import MetricsServer  # first exporter: see Daemon.registry

            new = MetricsServer(
                self._registry(),
                self.supervisor.health,
                max_connections=config.metrics.max_connections,
                limit_stats=self.supervisor.limit_stats,
            )
            await new.start(wanted.bind_host, wanted.port)
            log.info("metrics on http://%s/metrics", host_port(wanted.host or "0.0.0.0", new.port))
        if self.metrics is not None:
            await self.metrics.close()
        self.metrics, self._metrics_at = new, wanted

    def _registry(self) -> CollectorRegistry:
        if self.registry is None:
            from prometheus_client import CollectorRegistry

            from .metrics import register_metrics

            self.registry = CollectorRegistry()
            register_metrics(self.registry, self.supervisor.snapshot)
        return self.registry

    def _refresh_status(self) -> str:
        self._status = self.supervisor.status_line()
        return self._status

    async def _first_status(self) -> None:
        """The "running" line, once every tunnel has had its first chance to connect."""
        await self.supervisor.first_attempts(FIRST_STATUS_WAIT)
        log.info("running %s: %s", self.path, self._refresh_status())

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_PERIOD)
            before = self._status
            if self._refresh_status() != before:
                self.notifier.notify(STATUS=self._status)

    async def _shutdown(self, timeout: float) -> tuple[int, int]:
        for task in self._tasks:
            task.cancel()
        counts = await self.supervisor.stop(timeout)
        if self.metrics is not None:
            await self.metrics.close()
        self.notifier.close()
        return counts


def run(path: Path, config: Config | None = None) -> int:
    """``aiowstunnel run``: read the config, run the daemon in the foreground.

    ``config``: one already loaded (a one-line command's, commands.py), else ``path`` is read.

    Returns:
        The process exit code: 0 after a clean stop, 1 when it cannot start.
    """
    try:
        if config is None:
            config, warnings = read_and_check(path)
        else:  # no file: nothing of a file's to warn about
            check_tls(config)
            warnings = config_warnings(config)
    except ConfigError as exc:
        setup_logging("info")
        for error in exc.errors:
            log.error("%s: %s", exc.source, error)
        return 1
    setup_logging(config.log.level)
    # Before the server is built: its limits are derived from the soft limit it sees.
    before, soft, hard = raise_open_files_limit()
    log.info(
        "open files limit: soft %d%s, hard %d",
        soft,
        f" (raised from {before})" if soft != before else "",
        hard,
    )
    _log_warnings(warnings, path)
    runner, loop_name = event_loop_runner()
    log.info("event loop: %s; data path: %s", loop_name, data_path())
    with contextlib.suppress(KeyboardInterrupt):
        return runner(_main(path, config))
    return 0


def _log_warnings(warnings: list[str], path: Path) -> None:
    for warning in warnings:
        log.warning("%s: %s", path, warning)


async def _main(path: Path, config: Config) -> int:
    return await Daemon(path, config).run()
