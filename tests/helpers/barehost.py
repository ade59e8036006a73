"""Bare Debian 12 test servers with systemd as init, booted in systemd-nspawn on this machine.

A loopback-user host (tests/helpers/sshhosts.py) shares this machine's Pythons, wheel folder, certificate settings
and environment. A bare host shares nothing but the network (with `private_network`, not even that): a minimal
Debian 12 root made by debootstrap from the Debian mirror in this machine's apt sources, booted with
`systemd-nspawn --boot`, with

* systemd as init (`systemctl is-system-running` answers `running`) with logind sessions (libpam-systemd: the login
  user's own manager), Debian's own python3 (3.11), sshd listening on
  a loopback address of its own (127.0.0.N, a free port) with key auth only;
* with `private_network`, a network namespace of its own with loopback only (`systemd-nspawn --private-network`):
  no route out at all; the controller then reaches its sshd through an SSH ProxyCommand that runs
  tests/helpers/tcpforward.py with this machine's /usr/bin/python3 inside that namespace (`nsenter -t <init> -n`);
* one login user with sudo (NOPASSWD), nothing else: no pyenv, no wheel folder, no pip configuration, no
  certificate or pip variables in its SSH sessions;
* this machine's extra CAs (those in /etc/ssl/certs/ca-certificates.crt that Debian's bundle lacks) in its system
  trust store (`update-ca-certificates`), as a corporate image has them.

The debootstrapped root is cached under `/var/cache/modelrig-bare/base-<key>` (built once, under a lock) and copied
per host under `/var/cache/modelrig-bare/hosts/<pid>-<n>`. `BareHost.reboot()` stops the container (SIGTERM to
nspawn: a clean shutdown) and boots it again; `BareHost.root(cmd)` runs a command inside as root (nsenter into the
container's init); `BareHosts.inventory()` writes an Ansible inventory in the style of `SshHosts.inventory()`.
`close()` stops every container and removes its root; containers and roots left by an interrupted run (their
folder names a pid that is gone) are removed by the next run. Needs root, debootstrap and systemd-container
(`scripts/system-deps.sh`), and Debian's archive on the network for the first build.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.sshhosts import HostSet, _alive, _descendants, _free_address, _free_port

#: Cached base roots and per-run host roots live here (root-owned, persistent across runs).
BARE_ROOT = Path(os.environ.get("MODELRIG_BARE_CACHE", "/var/cache/modelrig-bare"))
SUITE = "bookworm"
#: What the image has beyond debootstrap's minbase: an init with logind sessions (libpam-systemd, which systemd
#: recommends and every Debian server install has: it starts the login user's own manager), sshd, sudo, Debian's
#: python3 and CA store.
INCLUDE = ("systemd", "systemd-sysv", "libpam-systemd", "dbus", "openssh-server", "python3", "sudo",
           "ca-certificates")
#: Bump to rebuild every cached base (a change to how the base is prepared).
BASE_VERSION = 1
#: The login user of every bare host.
LOGIN = "operator1"
MACHINE_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: The stdio<->TCP forwarder the ProxyCommand of a host with a private network runs inside its namespace.
FORWARDER = Path(__file__).with_name("tcpforward.py")
SYSTEM_PYTHON = "/usr/bin/python3"
_HOST_NUMBERS = itertools.count()
_LIVE: list[BareHost] = []


def available() -> str | None:
    """None when bare hosts can be booted here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "bare test hosts need root (debootstrap, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "ssh", "ssh-keygen", "chroot"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            return f"{tool} is missing: run scripts/system-deps.sh"
    return None


def debian_mirror() -> str:
    """The Debian archive this machine's apt sources name for bookworm (deb822 or one-line), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.MULTILINE))
            if SUITE in fields.get("Suites", "").split() and "/debian" in fields.get("URIs", ""):
                uri = fields["URIs"].split()[0]
                if not uri.rstrip("/").endswith("-security"):
                    return uri
    for path in [Path("/etc/apt/sources.list"), *(sorted(sources.glob("*.list")) if sources.is_dir() else [])]:
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb" and SUITE in parts and "security" not in line:
                    return next(p for p in parts[1:] if "://" in p)
    return "http://deb.debian.org/debian"


def base_root() -> Path:
    """The cached debootstrapped root (built once per key, under a lock shared by concurrent test sessions)."""
    mirror = debian_mirror()
    key = hashlib.sha256(f"{BASE_VERSION} {SUITE} {mirror} {','.join(INCLUDE)}".encode()).hexdigest()[:12]
    base = BARE_ROOT / f"base-{key}"
    if (base / ".complete").is_file():
        return base
    BARE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BARE_ROOT / f"base-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (base / ".complete").is_file():
            return base
        build = BARE_ROOT / f"build-{key}-{os.getpid()}"
        _remove_root(build)
        result = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE,
                                 str(build), mirror], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            _remove_root(build)
            raise RuntimeError(f"debootstrap {SUITE} from {mirror} failed:\n{result.stdout[-3000:]}"
                               f"{result.stderr[-3000:]}")
        _chroot(build, "apt-get clean")
        # Each boot makes its own machine id; each host gets its own host keys.
        (build / "etc" / "machine-id").write_text("")
        for key_file in (build / "etc" / "ssh").glob("ssh_host_*"):
            key_file.unlink()
        (build / ".complete").write_text(f"{SUITE} {mirror}\n")
        _remove_root(base)
        build.rename(base)
    return base


def extra_cas(root: Path) -> list[str]:
    """PEM blocks of this machine's CA bundle that the root's own Debian bundle lacks (a proxy's CA, say)."""
    pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
    theirs = root / "etc" / "ssl" / "certs" / "ca-certificates.crt"
    known = {_norm(b) for b in pem.findall(theirs.read_text())} if theirs.is_file() else set()
    ours = pem.findall(MACHINE_BUNDLE.read_text()) if MACHINE_BUNDLE.is_file() else []
    return [b for b in ours if _norm(b) not in known]


def _remove_root(path: Path) -> None:
    """Remove a container root or a debootstrap build: first unmount whatever is mounted below it (an interrupted
    debootstrap leaves /proc and /sys mounted there), then delete without crossing into other file systems."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True, check=False)


def _norm(block: str) -> str:
    return "".join(block.split())


def _chroot(root: Path, command: str) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    result = subprocess.run(["chroot", str(root), "/bin/sh", "-c", command], capture_output=True, text=True,
                            env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"in {root}: {command}: {result.stdout}{result.stderr}")


@dataclass
class BareHost:
    """One booted bare server: its inventory name, container root, sshd address and port, login user."""

    name: str
    folder: Path
    address: str
    port: int
    user: str = LOGIN
    #: More systemd-nspawn options for every boot (`--bind=...`, `--private-network`, ...).
    nspawn_args: tuple[str, ...] = ()
    #: Boot in a network namespace of its own (loopback only): no route out; sshd reached through `proxy_command`.
    private_network: bool = False
    nspawn: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    boots: int = 0

    @property
    def rootfs(self) -> Path:
        return self.folder / "root"

    @property
    def home(self) -> Path:
        """The login user's home, as this machine sees it (inside the container root)."""
        return self.rootfs / "home" / self.user

    def proxy_command(self) -> str | None:
        """The SSH ProxyCommand that reaches sshd inside the host's own network namespace (None when it shares
        this machine's network): the forwarder run under `nsenter -n` into the running container's namespace."""
        if not self.private_network:
            return None
        pid = self.init_pid()
        if pid is None:
            raise RuntimeError(f"{self.name} is not running")
        return f"nsenter -t {pid} -n {SYSTEM_PYTHON} {FORWARDER} %h %p"

    def hostvars(self, keyfile: Path, known_hosts: Path) -> dict[str, Any]:
        """Ansible connection variables for this host (no become: roles ask for it where they need root)."""
        proxy = self.proxy_command()
        via = f" -o 'ProxyCommand={proxy}'" if proxy else ""
        return {
            "ansible_host": self.address,
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(keyfile),
            "ansible_ssh_common_args": f"-F /dev/null -o UserKnownHostsFile={known_hosts} -o IdentitiesOnly=yes "
                                       f"-o StrictHostKeyChecking=yes{via}",
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    def boot(self, timeout: float = 90) -> None:
        """Start the container and wait until systemd is up (running or degraded) and sshd accepts connections."""
        log = open(self.folder / f"boot-{self.boots}.log", "wb")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=passive", "-D", str(self.rootfs),
             f"--machine={self.name}", *(["--private-network"] if self.private_network else []), *self.nspawn_args],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.boots += 1
        deadline = time.monotonic() + timeout
        while self.init_pid() is None:
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the container's init did not start")
            time.sleep(0.1)
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.root("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"{self.name}: systemd did not finish booting (state {state!r})")
        while time.monotonic() < deadline:
            self._check_alive()
            if self.private_network:
                probe = f"import socket; socket.create_connection(({self.address!r}, {self.port}), timeout=1)"
                if self.netns([SYSTEM_PYTHON, "-c", probe]).returncode == 0:
                    return
                time.sleep(0.2)
                continue
            try:
                with socket.create_connection((self.address, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name}: sshd is not listening on {self.address}:{self.port}")

    def _check_alive(self) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            log = sorted(self.folder.glob("boot-*.log"))[-1].read_text(errors="replace")
            raise RuntimeError(f"{self.name}: systemd-nspawn exited:\n{log[-3000:]}")

    def init_pid(self) -> int | None:
        """The pid (on this machine) of the container's init: the nspawn process's child."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return None
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None

    def root(self, command: str, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside the container as root (its mount, uts, ipc and pid namespaces)."""
        pid = self.init_pid()
        if pid is None:
            raise RuntimeError(f"{self.name} is not running")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root", "SYSTEMD_PAGER": "",
               "SYSTEMD_COLORS": "0"}
        result = subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-p", "--", "/bin/sh", "-c", command],
                                capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name}: {command} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def netns(self, argv: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command of this machine (its files, its user) inside the container's network namespace only."""
        pid = self.init_pid()
        if pid is None:
            raise RuntimeError(f"{self.name} is not running")
        return subprocess.run(["nsenter", "-t", str(pid), "-n", "--", *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def shutdown(self, timeout: float = 60) -> None:
        """Stop the container cleanly (SIGTERM to nspawn halts systemd); SIGKILL after `timeout`."""
        if self.nspawn is None:
            return
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(self.nspawn.pid)
                self.nspawn.wait()
        self.nspawn = None

    def reboot(self) -> None:
        """A reboot: a clean shutdown, then the same root booted again (enabled units start again)."""
        self.shutdown()
        self.boot()


class BareHosts(HostSet):
    """Bare hosts living in `workdir` (client key, known_hosts, logs); use as a context manager."""

    hosts: dict[str, BareHost]

    def _remove_stale(self) -> None:
        remove_stale_hosts()

    def _ssh_options(self, host: BareHost) -> list[str]:
        proxy = host.proxy_command()
        return ["-o", f"ProxyCommand={proxy}"] if proxy else []

    def add(self, name: str, *, nspawn_args: tuple[str, ...] = ()) -> BareHost:
        """Copy the cached base root, prepare the login user, sshd and trust store, boot; returns once ssh works.
        `nspawn_args` go to systemd-nspawn on every boot (`--bind=SRC:DST`, ...). The host boots on this machine's
        network (apt works); `reboot(name, private_network=True)` moves it into a network namespace of its own."""
        base = base_root()
        folder = BARE_ROOT / "hosts" / f"{os.getpid()}-{next(_HOST_NUMBERS)}"
        _remove_root(folder)
        folder.mkdir(parents=True)
        address = _free_address()
        host = BareHost(name=name, folder=folder, address=address, port=_free_port(address),
                        nspawn_args=tuple(nspawn_args))
        self.hosts[name] = host
        _LIVE.append(host)
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(host.rootfs)], check=True)
        self._prepare(host)
        host.boot()
        _wait_ssh(self, host)
        return host

    def _prepare(self, host: BareHost) -> None:
        root = host.rootfs
        (root / ".complete").unlink(missing_ok=True)
        (root / "etc" / "hostname").write_text(f"{host.name}\n")
        (root / "etc" / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n::1\tlocalhost\n")
        # The login user: a shell, sudo without a password, this run's client key; nothing in its environment.
        _chroot(root, f"useradd --create-home --shell /bin/bash --groups sudo {host.user} && "
                      f"usermod -p '*' {host.user}")
        sudoers = root / "etc" / "sudoers.d" / "90-operator"
        sudoers.write_text(f"{host.user} ALL=(ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        ssh_dir = host.home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        (ssh_dir / "authorized_keys").chmod(0o600)
        _chroot(root, f"chown -R {host.user}:{host.user} /home/{host.user}/.ssh && ssh-keygen -A -q")
        (root / "etc" / "ssh" / "sshd_config.d" / "modelrig-test.conf").write_text(
            f"ListenAddress {host.address}:{host.port}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"PermitRootLogin no\nAllowUsers {host.user}\n")
        # This machine's extra CAs, where a corporate image puts them.
        extras = extra_cas(root)
        local = root / "usr" / "local" / "share" / "ca-certificates"
        local.mkdir(parents=True, exist_ok=True)
        for index, block in enumerate(extras):
            (local / f"site-ca-{index}.crt").write_text(block + "\n")
        if extras:
            _chroot(root, "update-ca-certificates")
        public = (root / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
        with self.known_hosts.open("a") as out:
            out.write(f"[{host.address}]:{host.port} {public[0]} {public[1]}\n")

    def reboot(self, name: str, *, private_network: bool | None = None) -> None:
        """Reboot a host and wait until its login user can log in again; `private_network` True boots it into a
        network namespace of its own (loopback only: no route out), False back onto this machine's network."""
        host = self.hosts[name]
        if private_network is not None:
            host.private_network = private_network
        host.reboot()
        _wait_ssh(self, host)

    def close(self) -> None:
        """Stop every container (clean shutdown, SIGKILL if it hangs) and remove its root."""
        for host in self.hosts.values():
            _destroy(host)
        self.hosts.clear()


def _wait_ssh(hosts: BareHosts, host: BareHost, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = hosts.ssh(host.name, "true", check=False, timeout=30)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host.name}: ssh {host.user}@{host.address}:{host.port} fails: {result.stderr}")
        time.sleep(0.3)


def _destroy(host: BareHost) -> None:
    try:
        host.shutdown(timeout=30)
    finally:
        if host in _LIVE:
            _LIVE.remove(host)
        _remove_root(host.folder)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and everything below it (the container's init first: that ends its pid namespace)."""
    for child in _descendants(pid):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def remove_stale_hosts() -> list[Path]:
    """Stop containers and remove roots left by interrupted runs (their folder's pid is gone); returns the folders."""
    hosts_dir = BARE_ROOT / "hosts"
    removed: list[Path] = []
    for folder in sorted(hosts_dir.iterdir()) if hosts_dir.is_dir() else []:
        pid = folder.name.partition("-")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        rootfs = str(folder / "root")
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"systemd-nspawn") and rootfs.encode() in argv:
                _kill_tree(int(proc.name))
        _remove_root(folder)
        removed.append(folder)
    for build in BARE_ROOT.glob("build-*-*") if BARE_ROOT.is_dir() else []:
        pid = build.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            _remove_root(build)
    return removed


@atexit.register
def _close_live() -> None:
    """Hosts still up when the interpreter exits (an error between add and close) are stopped and removed."""
    for host in list(_LIVE):
        _destroy(host)


@pytest.fixture(name="bare_hosts")
def bare_hosts_fixture(tmp_path: Path) -> Iterator[BareHosts]:
    """Bare hosts for one test (`bare_hosts.add(name)`), all removed afterwards; fails where none can exist."""
    reason = available()
    if reason:
        pytest.fail(reason)
    with BareHosts(tmp_path / "bare-hosts") as hosts:
        yield hosts


@pytest.fixture(name="bare_hosts_module", scope="module")
def bare_hosts_module_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BareHosts]:
    """Bare hosts shared by one test module (one boot for an ordered flow of tests)."""
    reason = available()
    if reason:
        pytest.fail(reason)
    with BareHosts(tmp_path_factory.mktemp("bare-hosts")) as hosts:
        yield hosts
