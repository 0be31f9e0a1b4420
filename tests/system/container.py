"""Throw-away Debian containers with systemd as PID 1, for the whole-system tests.

Owns three things: a cached debootstrap rootfs per suite, booting a copy-on-write overlay of it
with systemd-nspawn, and running commands inside. Stdlib only, so that it runs on a bare host.
The host needs no systemd of its own: commands enter the container's namespaces with nsenter
(machinectl needs systemd-machined on the host), and nspawn is kept in a cgroup we create.

    with Container("bookworm") as box:
        box.copy_in(Path("dist/x.deb"), "/root/x.deb")
        print(box.run(["systemctl", "is-system-running"]).stdout)

Run it as a script to build and boot once and print the timings:
``python3 tests/system/container.py bookworm trixie``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import http.client
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

SUITES = ("bookworm", "trixie")
# What the tests need inside: systemd as init, python3 for the daemon (python3-venv for
# `python3 -m venv` users, python3-systemd for journald/sd_notify), procps for /bin/kill in
# ExecReload and ps, curl to talk to the tunnels from inside.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "procps",
    "python3",
    "python3-venv",
    "python3-systemd",
    "curl",
    "ca-certificates",
)
# Bump when the rootfs tweaks below change, so that cached trees are rebuilt.
ROOTFS_FORMAT = 1
DEFAULT_CACHE_DIR = Path("/var/tmp/aiowstunnel-rootfs")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_PACKAGES = ("systemd-container", "debootstrap", "util-linux", "debian-archive-keyring")
IN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IN_ENV = (
    f"PATH={IN_PATH}",
    "HOME=/root",
    "LANG=C.UTF-8",
    "TERM=dumb",
    "SYSTEMD_PAGER=cat",
    "PAGER=cat",
    "SYSTEMD_COLORS=0",
    "DEBIAN_FRONTEND=noninteractive",
)
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class ContainerError(RuntimeError):
    """The container could not be built, booted, or a command in it failed."""


def cache_dir() -> Path:
    """Where rootfs trees and per-boot state live (``AIOWSTUNNEL_ROOTFS_DIR`` overrides)."""
    return Path(os.environ.get("AIOWSTUNNEL_ROOTFS_DIR") or DEFAULT_CACHE_DIR)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------ host


def _host_has_systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and _comm(1) == "systemd"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _missing_tools() -> list[str]:
    tools = {"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap"}
    tools |= {"nsenter": "util-linux", "unshare": "util-linux"}
    return sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})


def _install_host_packages(packages: Sequence[str]) -> str:
    """apt-get install, once with the current lists and once after an update; '' on success."""
    if shutil.which("apt-get") is None:
        return "no apt-get to install them with"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "install", *packages]
    last = ""
    for prepare in ([], ["apt-get", "-q", "update"]):
        try:
            if prepare:
                subprocess.run(prepare, capture_output=True, timeout=300, check=False)
            proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
        except subprocess.TimeoutExpired:
            return "apt-get timed out"
        if proc.returncode == 0:
            return ""
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        last = last[0]
    return f"apt-get install failed: {last}"


def _cgroup_layout() -> str:
    """'unified', 'hybrid', 'legacy' or '' (none usable), as nspawn will see it."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return "unified"
    if (root / "systemd" / "cgroup.procs").exists():
        return "hybrid" if (root / "unified" / "cgroup.procs").exists() else "legacy"
    return ""


@functools.cache
def can_boot() -> tuple[bool, str]:
    """Whether this machine can boot a container; the reason when it cannot.

    Installs the missing host tools (systemd-container, debootstrap) with apt-get first.
    """
    if not sys.platform.startswith("linux"):
        return False, "needs Linux"
    if os.geteuid() != 0:
        return False, "needs root (debootstrap, mount and systemd-nspawn)"
    if missing := _missing_tools():
        if error := _install_host_packages(missing):
            return False, f"missing host tools ({', '.join(missing)}): {error}"
        if missing := _missing_tools():
            return False, f"host tools still missing after install: {', '.join(missing)}"
    layout = _cgroup_layout()
    if not layout:
        return False, "no cgroup hierarchy mounted at /sys/fs/cgroup"
    # Inside unprivileged containers (docker without --privileged) namespaces are refused.
    probe = ["unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "true"]
    proc = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        return False, f"cannot create namespaces: {proc.stderr.strip()}"
    version = subprocess.run(
        ["systemd-nspawn", "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.split("\n", 1)[0]
    return True, f"{version}; cgroups {layout}"


def _mirror() -> str:
    """The Debian mirror: AIOWSTUNNEL_DEBIAN_MIRROR, else the host's apt sources, else default."""
    if mirror := os.environ.get("AIOWSTUNNEL_DEBIAN_MIRROR"):
        return mirror
    sources = Path("/etc/apt")
    for path in sorted(sources.glob("sources.list.d/*.sources")):
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "uris":
                for uri in value.split():
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
    for path in [sources / "sources.list", *sorted(sources.glob("sources.list.d/*.list"))]:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if (
                    words[:1] == ["deb"]
                    and len(words) > 1
                    and words[1].rstrip("/").endswith("/debian")
                ):
                    return words[1]
    return DEFAULT_MIRROR


# ---------------------------------------------------------------------------------- rootfs


@contextlib.contextmanager
def _locked(path: Path, timeout: float):
    """An exclusive flock on ``path``, waited for at most ``timeout`` seconds."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        wait_for(lambda: _try_flock(lock.fileno(), fcntl), timeout, f"lock {path}", interval=0.5)
        yield


def _try_flock(fd: int, fcntl) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (mountinfo escapes spaces as \\040)."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Unmount anything below ``path`` (a killed debootstrap leaves /proc mounted), then rm."""
    if not path.exists():
        return
    for point in _mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    # --one-file-system: never follow into a mount that refused to go away.
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=300)


def build_rootfs(suite: str, *, timeout: float = 1200.0, force: bool = False) -> Path:
    """Build (or reuse) the pristine rootfs for ``suite`` under :func:`cache_dir`.

    The tree is reused while its fingerprint (suite, mirror, packages, format) matches.
    Concurrent callers are serialised by a lock file. Returns the rootfs path.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
    base = cache_dir()
    rootfs = base / f"rootfs-{suite}"
    stamp = rootfs / ".aiowstunnel-rootfs.json"
    mirror = _mirror()
    fingerprint = {"suite": suite, "mirror": mirror, "packages": PACKAGES, "format": ROOTFS_FORMAT}
    expected = json.dumps(fingerprint, sort_keys=True)
    with _locked(base / f".lock-{suite}", timeout):
        with contextlib.suppress(OSError):
            if not force and stamp.read_text() == expected:
                return rootfs
        ok, why = can_boot()
        if not ok:
            raise ContainerError(f"cannot build a rootfs here: {why}")
        tmp = base / f"rootfs-{suite}.tmp"
        _remove_tree(tmp)
        log = base / f"build-{suite}.log"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
        started = time.monotonic()
        with open(log, "w") as out:
            # A process group of its own, so that a timeout can end its whole tree.
            proc = subprocess.Popen(
                [*cmd, suite, str(tmp), mirror], stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _remove_tree(tmp)
                raise ContainerError(
                    f"debootstrap {suite} timed out after {timeout:.0f}s"
                ) from None
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            _remove_tree(tmp)
            raise ContainerError(f"debootstrap {suite} failed (log: {log}):\n{tail}")
        _tweak_rootfs(tmp)
        elapsed = time.monotonic() - started
        (tmp / ".aiowstunnel-build-seconds").write_text(f"{elapsed:.1f}\n")
        stamp_tmp = tmp / stamp.name
        stamp_tmp.write_text(expected)
        _remove_tree(rootfs)
        tmp.rename(rootfs)
        return rootfs


def _tweak_rootfs(root: Path) -> None:
    """Make a debootstrap tree boot cleanly and identically as a container."""
    (root / "etc/hostname").unlink(missing_ok=True)  # nspawn sets the machine name instead
    (root / "etc/machine-id").write_text("")  # empty: a fresh id on every boot
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    units = root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    # Nothing here manages a network, so nothing should wait for one.
    wait_online = units / "systemd-networkd-wait-online.service"
    wait_online.unlink(missing_ok=True)
    wait_online.symlink_to("/dev/null")


# ------------------------------------------------------------------------------- container


class Container:
    """One booted container: an overlay of the cached rootfs, discarded at exit.

    Args:
        suite: "bookworm" or "trixie".
        private_network: give the container its own network namespace (only ``lo``), so that
            its ports never clash with the host's; the host still reaches them through
            :meth:`connect` / :meth:`http_get`. False shares the host's network.
        boot_timeout: seconds to wait for ``systemctl is-system-running``.
    """

    def __init__(
        self, suite: str = "bookworm", *, private_network: bool = True, boot_timeout: float = 120.0
    ) -> None:
        self.suite = suite
        self.private_network = private_network
        self.boot_timeout = boot_timeout
        self.name = f"aiowstunnel-{suite}-{secrets.token_hex(3)}"
        self.state: Path | None = None
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1, as the host sees it
        self.boot_seconds = 0.0

    # -------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Container:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def root(self) -> Path:
        """The container's root directory as seen from the host (read it, don't write it)."""
        assert self.state is not None, "container not started"
        return self.state / "root"

    def start(self) -> None:
        """Build the rootfs if needed, boot it, and wait until systemd says it is up."""
        rootfs = build_rootfs(self.suite)
        instances = cache_dir() / "instances"
        _reap_stale_instances(instances)
        instances.mkdir(parents=True, exist_ok=True)
        self.state = instances / self.name
        self.state.mkdir()
        (self.state / "owner").write_text(f"{os.getpid()}\n")
        self._mount_root(rootfs)

        cmd = ["systemd-nspawn", "-D", str(self.root), "--boot", f"--machine={self.name}"]
        cmd += ["--console=pipe", "--register=no"]
        if not _host_has_systemd():
            cmd.append("--keep-unit")  # no host manager to create a scope: stay in our cgroup
        if self.private_network:
            cmd.append("--private-network")
        cgroups = [str(p) for p in _cgroup_dirs(self.name)]
        (self.state / "cgroups").write_text("\n".join(cgroups))
        # A fresh session in a cgroup of its own: nspawn --keep-unit makes the cgroup it starts
        # in the container's, and sub-cgroups must not be shared between containers.
        wrapper = (
            'for d in $1; do mkdir -p "$d" && echo $$ >"$d/cgroup.procs"; done; shift; exec "$@"'
        )
        started = time.monotonic()
        with open(self.state / "console.log", "wb") as console:
            self.nspawn = subprocess.Popen(
                ["/bin/sh", "-c", wrapper, "sh", " ".join(cgroups), *cmd],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        (self.state / "nspawn.pid").write_text(f"{self.nspawn.pid}\n")
        self.leader = wait_for(self._find_leader, 30, "the container's systemd to start")
        (self.state / "leader.pid").write_text(f"{self.leader}\n")
        state = wait_for(self._booted, self.boot_timeout, f"{self.name} to boot")
        self.boot_seconds = time.monotonic() - started
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
            print(f"{self.name}: booted degraded; failed units:\n{failed}", file=sys.stderr)

    def _mount_root(self, rootfs: Path) -> None:
        assert self.state is not None
        for sub in ("upper", "work", "root"):
            (self.state / sub).mkdir()
        opts = f"lowerdir={rootfs},upperdir={self.state / 'upper'},workdir={self.state / 'work'}"
        mount = ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)]
        if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
            # No overlayfs (e.g. the cache is itself on overlayfs): a reflink/plain copy.
            self.root.rmdir()
            subprocess.run(
                ["cp", "-a", "--reflink=auto", str(rootfs), str(self.root)], check=True, timeout=600
            )

    def _find_leader(self) -> int | None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited early:\n{self.console_log()}")
        for pid in _children(self.nspawn.pid):
            if _comm(pid) == "systemd":
                return pid
        return None

    def _booted(self) -> str | None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited during boot:\n{self.console_log()}")
        state = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
        return state.stdout.strip() if state.stdout.strip() in ("running", "degraded") else None

    def console_log(self) -> str:
        """What the container printed on its console (the tail)."""
        if self.state is None:
            return ""
        with contextlib.suppress(OSError):
            return (self.state / "console.log").read_text(errors="replace")[-4000:]
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Power off (orderly, then by force), unmount, and delete everything of this boot."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            # nspawn turns SIGTERM into an orderly shutdown of the container (its --kill-signal).
            self.nspawn.terminate()
            try:
                self.nspawn.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Killing the leader ends the container's whole PID namespace.
                if self.leader and _comm(self.leader) == "systemd":
                    os.kill(self.leader, signal.SIGKILL)
                self.nspawn.kill()
                self.nspawn.wait(timeout=30)
        self.nspawn = None
        if self.state is not None:
            _cleanup_instance(self.state)
            self.state = None
        self.leader = 0

    # -------------------------------------------------------------------- inside

    def run(
        self,
        args: Sequence[str],
        *,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside the container (all its namespaces, a clean environment).

        Returns the completed process with text stdout/stderr. Raises ContainerError when
        ``check`` and the exit status is not 0, subprocess.TimeoutExpired past ``timeout``.
        """
        if not self.leader:
            raise ContainerError("container not running")
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        cmd = ["nsenter", f"--target={self.leader}", "--all", "env", "-i", *IN_ENV, *extra, *args]
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, check=False)
        done = subprocess.CompletedProcess(
            args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and done.returncode != 0:
            raise ContainerError(
                f"{' '.join(args)!r} exited {done.returncode} in {self.name}\n"
                f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
            )
        return done

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside (``set -eu`` is up to the script)."""
        return self.run(["/bin/sh", "-c", script], **kwargs)

    def copy_in(self, src: Path, dst: str, mode: int | None = None) -> None:
        """Copy host file or folder ``src`` to the container path ``dst`` (its new name).

        Goes through tar inside the container, so that paths resolve in the container's
        root (symlinks in it never point back into the host).
        """
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info_filter = None
            if mode is not None:

                def info_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
                    info.mode = mode
                    return info

            tar.add(str(src), arcname=Path(dst).name, filter=info_filter)
        self._untar(buf.getvalue(), dst)

    def write_file(self, dst: str, content: str | bytes, mode: int = 0o644) -> None:
        """Create or replace the container file ``dst`` with ``content``."""
        data = content.encode() if isinstance(content, str) else content
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(Path(dst).name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        self._untar(buf.getvalue(), dst)

    def _untar(self, archive: bytes, dst: str) -> None:
        if not dst.startswith("/"):
            raise ValueError(f"container path must be absolute: {dst!r}")
        parent = str(Path(dst).parent)
        script = 'mkdir -p "$1" && tar --no-same-owner -C "$1" -xf -'
        self.run(["/bin/sh", "-c", script, "sh", parent], input=archive)

    def read_file(self, path: str) -> str:
        """The text of a file inside the container."""
        return self.run(["cat", path]).stdout

    # -------------------------------------------------------------------- network

    def connect(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
        """A host socket connected to ``host:port`` in the container's network namespace.

        With a private network the socket is created by a short-lived thread that first joins
        the container's network namespace (a per-thread property in Linux); a socket stays in
        the namespace it was created in, whichever thread uses it later.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if self.private_network:
            sock = _socket_in_netns(self.leader, family)
        else:
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def http_get(self, port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, str]:
        """GET ``http://127.0.0.1:port/path`` from the host, inside the container's network."""
        container = self

        class Connection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = container.connect(port, timeout=timeout)

        conn = Connection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()


def _socket_in_netns(pid: int, family: int) -> socket.socket:
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[socket.socket | BaseException] = []

    def create() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into net namespace of {pid}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.socket(family, socket.SOCK_STREAM))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=create, name="netns-socket")
    thread.start()
    thread.join(timeout=10)
    if not result:
        raise ContainerError("timed out creating a socket in the container's network namespace")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


# ------------------------------------------------------------------------------- cleanup


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces and parentheses: split after the last ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _cgroup_dirs(name: str) -> list[Path]:
    """The cgroups to start nspawn in: one per hierarchy that systemd uses."""
    root = Path("/sys/fs/cgroup")
    layout = _cgroup_layout()
    if layout == "unified":
        return [root / name]
    dirs = [root / "systemd" / name]
    if layout == "hybrid":
        dirs.append(root / "unified" / name)
    return dirs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _is_our_leader(pid: int, name: str) -> bool:
    """True if ``pid`` is still a container init that we booted under ``name``."""
    if not pid or _comm(pid) != "systemd":
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"container=systemd-nspawn" not in environ:
        return False
    # nspawn sets the machine name as the hostname of the container's UTS namespace.
    uts = ["nsenter", f"--target={pid}", "--uts", "hostname"]
    proc = subprocess.run(uts, capture_output=True, text=True, timeout=10, check=False)
    return proc.stdout.strip() == name


def _cleanup_instance(state: Path) -> None:
    """Kill what is left of a boot, unmount its root, remove its cgroups and state."""
    leader = _read_pid(state / "leader.pid")
    if _is_our_leader(leader, state.name):
        os.kill(leader, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not _alive(leader), 10, "the container to die", interval=0.1)
    nspawn = _read_pid(state / "nspawn.pid")
    if nspawn and _alive(nspawn) and "systemd-nspawn" in _cmdline(nspawn):
        os.kill(nspawn, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not _alive(nspawn), 10, "systemd-nspawn to die", interval=0.1)
    with contextlib.suppress(OSError):
        for line in (state / "cgroups").read_text().splitlines():
            cgroup = Path(line)
            if cgroup.is_dir():
                # Depth first: only empty cgroups can be removed, and rmdir is the way.
                for sub in sorted((p for p in cgroup.rglob("*") if p.is_dir()), reverse=True):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
    _remove_tree(state)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _reap_stale_instances(instances: Path) -> None:
    """Clean up boots whose owning process died without stopping them (e.g. SIGKILL)."""
    if not instances.is_dir():
        return
    for state in instances.iterdir():
        owner = _read_pid(state / "owner")
        if owner == os.getpid() or (owner and _alive(owner)):
            continue
        _cleanup_instance(state)


# ------------------------------------------------------------------------------------ main


def main(argv: Sequence[str]) -> int:
    """Build and boot each suite once; print how long each step took."""
    ok, why = can_boot()
    print(f"can_boot: {ok} ({why})")
    if not ok:
        return 1
    for suite in argv or SUITES:
        started = time.monotonic()
        rootfs = build_rootfs(suite)
        built = (rootfs / ".aiowstunnel-build-seconds").read_text().strip()
        print(f"{suite}: rootfs ready in {time.monotonic() - started:.1f}s (debootstrap {built}s)")
        with Container(suite) as box:
            state = box.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            print(f"{suite}: booted to {state!r} in {box.boot_seconds:.2f}s")
            stopping = time.monotonic()
        print(f"{suite}: powered off and cleaned up in {time.monotonic() - stopping:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
