"""Real SSH test hosts on this machine: one Unix user + one sshd on its own loopback address per host.

Each host is a user with its own home (so its own data root) reached through an `sshd -D -f <own config>`
listening on `127.0.0.N:<free port>` with a host key and a client key generated for the run, public-key login
only. `SshHosts.inventory()` writes an Ansible inventory for them whose SSH settings ignore the user's own SSH
setup (`-F /dev/null`, the run's known_hosts file). Everything is undone by `close()`: sshds stopped, the test
users' processes ended by pid, users removed with their homes. Users left behind by an interrupted run carry a
marker in their GECOS field with the pid that made them and are removed by the next run. Needs root and
Debian's openssh-server (`scripts/system-deps.sh` installs it).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The toolkit env's bin folder: ansible, ansible-playbook, ansible-doc, ansible-lint.
BIN = Path(sys.executable).parent

SSHD = Path("/usr/sbin/sshd")
_USER_NUMBERS = itertools.count()
#: GECOS prefix of test users; followed by the pid of the process that created them.
MARKER = "modelrig-test-host"
#: Persistent per-slot folders (uv cache) that survive the users, chowned to each run's user.
SLOT_ROOT = Path(os.environ.get("MODELRIG_SSH_SLOTS", "/var/cache/modelrig-ansible-tests"))


#: This machine's own network settings (its CA bundle, pip's wheel folder) that every login session of a real host
#: on its network would have; each test host's sessions get them through sshd's SetEnv.
MACHINE_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT",
               "PIP_FIND_LINKS", "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK")


def machine_env() -> dict[str, str]:
    """The MACHINE_ENV variables set here (values without spaces, as SetEnv needs)."""
    return {k: v for k in MACHINE_ENV if (v := os.environ.get(k)) and " " not in v}


def available() -> str | None:
    """None when test hosts can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "SSH test hosts need root (useradd, sshd)"
    for tool in (str(SSHD), "ssh", "ssh-keygen", "useradd", "userdel"):
        if not shutil.which(tool):
            return f"{tool} is missing: run scripts/system-deps.sh"
    return None


@dataclass
class SshHost:
    """One test host: its inventory name, address, port, login user and home."""

    name: str
    address: str
    port: int
    user: str
    home: Path
    uid: int
    slot: Path
    is_root: bool = False
    sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    slot_lock: Any = field(default=None, repr=False)

    def hostvars(self, keyfile: Path, known_hosts: Path) -> dict[str, Any]:
        """Ansible connection variables for this host."""
        return {
            "ansible_host": self.address,
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(keyfile),
            "ansible_ssh_common_args": f"-F /dev/null -o UserKnownHostsFile={known_hosts} -o IdentitiesOnly=yes "
                                       "-o StrictHostKeyChecking=yes",
            "ansible_python_interpreter": "/usr/bin/python3",
        }


class HostSet:
    """What every set of test hosts shares: a `workdir` with the client key and known_hosts, the inventory writer
    and `ssh`; use as a context manager (`close()` on exit). Subclasses clean up what an interrupted run left
    (`_remove_stale`), make hosts (`add`) and undo them (`close`)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.hosts: dict[str, Any] = {}
        self.client_key = workdir / "client_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self._remove_stale()
        _keygen(self.client_key)
        self.known_hosts.write_text("")

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remove_stale(self) -> None:
        """Remove what an interrupted earlier run left behind."""

    def close(self) -> None:
        """Undo every host."""

    def inventory(self, path: Path, *, hostvars: dict[str, dict[str, Any]] | None = None,
                  groups: dict[str, list[str]] | None = None, group_vars: dict[str, Any] | None = None) -> Path:
        """Write an Ansible YAML inventory of every host (plus per-host variables, groups and `all` vars)."""
        hostvars = hostvars or {}
        hosts = {name: {**h.hostvars(self.client_key, self.known_hosts), **hostvars.get(name, {})}
                 for name, h in self.hosts.items()}
        data: dict[str, Any] = {"all": {"hosts": hosts, "vars": group_vars or {}}}
        if groups:
            data["all"]["children"] = {g: {"hosts": {m: None for m in members}} for g, members in groups.items()}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def _ssh_options(self, host: Any) -> list[str]:
        """Extra `ssh -o` options a host needs (a ProxyCommand, say)."""
        return []

    def ssh(self, name: str, command: str, *, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a host over SSH as its login user, as Ansible reaches it."""
        host = self.hosts[name]
        cmd = ["ssh", "-F", "/dev/null", "-i", str(self.client_key), "-o", f"UserKnownHostsFile={self.known_hosts}",
               "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=10", *self._ssh_options(host),
               "-p", str(host.port), f"{host.user}@{host.address}", command]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


class SshHosts(HostSet):
    """A set of SSH test hosts living in `workdir` (keys, configs, logs, known_hosts); use as a context manager."""

    hosts: dict[str, SshHost]

    def _remove_stale(self) -> None:
        remove_stale_users()

    def add(self, name: str, *, root: bool = False, env: dict[str, str] | None = None) -> SshHost:
        """Create a host: a fresh user (or root), a host key, an sshd on 127.0.0.N; returns once it accepts logins.
        Every session of that host gets this machine's network settings (`machine_env()`) and `env` (sshd's
        SetEnv), as a real host's own settings would be."""
        folder = self.workdir / name
        folder.mkdir()
        pubkey = self.client_key.with_suffix(".pub").read_text()
        slot, slot_lock = _claim_slot("root" if root else "user")
        if root:
            user, home, uid = "root", Path("/root"), 0
            keys = folder / "authorized_keys"
            keys.write_text(pubkey)
            keys.chmod(0o600)
        else:
            user = f"mrt{os.getpid()}x{next(_USER_NUMBERS)}"
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--comment",
                            f"{MARKER} pid={os.getpid()}", user], check=True, capture_output=True)
            subprocess.run(["usermod", "-p", "*", user], check=True, capture_output=True)
            entry = pwd.getpwnam(user)
            home, uid = Path(entry.pw_dir), entry.pw_uid
            ssh_dir = home / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            keys = ssh_dir / "authorized_keys"
            keys.write_text(pubkey)
            keys.chmod(0o600)
            for path in (ssh_dir, keys):
                os.chown(path, uid, entry.pw_gid)
            subprocess.run(["chown", "-R", f"{uid}:{entry.pw_gid}", str(slot)], check=True)
        host_key = folder / "host_ed25519"
        _keygen(host_key)
        address = _free_address()
        port = _free_port(address)
        config = folder / "sshd_config"
        lines = [
            f"ListenAddress {address}:{port}",
            f"HostKey {host_key}",
            f"PidFile {folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            f"PermitRootLogin {'prohibit-password' if root else 'no'}",
            f"AllowUsers {user}",
            "Subsystem sftp /usr/lib/openssh/sftp-server",
            "LogLevel ERROR",
        ]
        session_env = {**machine_env(), **(env or {})}
        if session_env:
            lines.append("SetEnv " + " ".join(f"{k}={v}" for k, v in session_env.items()))
        config.write_text("\n".join(lines) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        subprocess.run([str(SSHD), "-t", "-f", str(config)], check=True, capture_output=True)
        log = open(folder / "sshd.log", "wb")
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        log.close()
        host = SshHost(name=name, address=address, port=port, user=user, home=home, uid=uid, slot=slot,
                       is_root=root, sshd=proc, slot_lock=slot_lock)
        self.hosts[name] = host
        _wait_for_port(address, port, proc)
        public = host_key.with_suffix(".pub").read_text().split()
        with self.known_hosts.open("a") as out:
            out.write(f"[{address}]:{port} {public[0]} {public[1]}\n")
        return host

    def close(self) -> None:
        """Stop every sshd, end the test users' processes and remove the users with their homes."""
        for host in self.hosts.values():
            if host.sshd is not None and host.sshd.poll() is None:
                # Sessions (Ansible's ControlPersist ones included) are children of the listener: end them first.
                for pid in _descendants(host.sshd.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                host.sshd.terminate()
                try:
                    host.sshd.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    host.sshd.kill()
                    host.sshd.wait()
            if not host.is_root:
                _remove_user(host.user)
            if host.slot_lock is not None:
                host.slot_lock.close()  # releases the slot for the next host
        self.hosts.clear()


def _claim_slot(kind: str) -> tuple[Path, Any]:
    """The first free persistent slot folder of this kind (`user-0`, `user-1`, ...), locked (flock) until the
    returned handle is closed, so concurrent test sessions never share one."""
    SLOT_ROOT.mkdir(parents=True, exist_ok=True)
    for index in range(64):
        slot = SLOT_ROOT / f"{kind}-{index}"
        handle = open(SLOT_ROOT / f"{kind}-{index}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        slot.mkdir(exist_ok=True)
        return slot, handle
    raise RuntimeError(f"no free test host slot under {SLOT_ROOT}")


def remove_stale_users() -> list[str]:
    """Remove test users whose creating process is gone (an interrupted run); returns their names."""
    removed = []
    for entry in pwd.getpwall():
        if not entry.pw_gecos.startswith(MARKER):
            continue
        pid = entry.pw_gecos.rpartition("pid=")[2]
        if pid.isdigit() and _alive(int(pid)):
            continue
        _remove_user(entry.pw_name)
        removed.append(entry.pw_name)
    return removed


def _remove_user(user: str) -> None:
    """End every process of `user` (by pid), then `userdel -r`."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return
    for _ in range(50):
        pids = _pids_of(uid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    subprocess.run(["userdel", "--remove", "--force", user], capture_output=True, check=False)


def _pids_of(uid: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if proc.stat().st_uid == uid:
                    pids.append(int(proc.name))
            except FileNotFoundError:
                continue
    return pids


def _descendants(root: int) -> list[int]:
    """Every process below `root` (children, their children, ...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            parents.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", MARKER, "-f", str(path)], check=True,
                   capture_output=True)


def _free_address() -> str:
    """A loopback address 127.0.0.N (N >= 2) with nothing of ours on it; never anything but loopback."""
    return f"127.0.0.{random.randint(2, 254)}"


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _wait_for_port(address: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd on {address}:{port} exited with {proc.returncode}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd on {address}:{port} did not start within {timeout:.0f}s")


@pytest.fixture(name="ssh_hosts")
def ssh_hosts_fixture(tmp_path: Path) -> Iterator[SshHosts]:
    """SSH test hosts for one test (`ssh_hosts.add(name)`), all removed afterwards; fails where none can exist."""
    reason = available()
    if reason:
        pytest.fail(reason)
    with SshHosts(tmp_path / "ssh-hosts") as hosts:
        yield hosts


#: SSH control-socket folders by test folder: short paths in /tmp (a socket path must stay under 108 bytes), one
#: per test folder, removed at the end of the session (`remove_control_dirs`).
_CONTROL_DIRS: dict[Path, Path] = {}


def control_dir(tmp: Path) -> Path:
    """The SSH control-socket folder of the ansible commands a test runs from `tmp` (made once)."""
    if tmp not in _CONTROL_DIRS:
        _CONTROL_DIRS[tmp] = Path(tempfile.mkdtemp(prefix="cp", dir="/tmp"))
    return _CONTROL_DIRS[tmp]


def remove_control_dirs() -> None:
    """Remove every control-socket folder `control_dir` made (conftest calls it when the session ends)."""
    while _CONTROL_DIRS:
        shutil.rmtree(_CONTROL_DIRS.popitem()[1], ignore_errors=True)


def ansible_env(tmp: Path) -> dict[str, str]:
    """Environment for ansible commands run by a test: this checkout's ansible.cfg, a private ANSIBLE_HOME and
    control-socket folder, no colour."""
    control = control_dir(tmp)
    return {**os.environ, "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"), "ANSIBLE_HOME": str(tmp / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def ansible(tmp: Path, inventory: Path, pattern: str, *args: str,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`ansible -i INVENTORY PATTERN ARGS...` from the repository root."""
    return subprocess.run([str(BIN / "ansible"), "-i", str(inventory), pattern, *args], cwd=REPO_ROOT,
                          env=ansible_env(tmp), capture_output=True, text=True, timeout=timeout, check=False)


def playbook(tmp: Path, inventory: Path, book: str, *args: str, env: dict[str, str] | None = None,
             timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook -i INVENTORY playbooks/BOOK ARGS...` from the repository root."""
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO_ROOT / "playbooks" / book),
                           *args], cwd=REPO_ROOT, env={**ansible_env(tmp), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def recap(out: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of a playbook run: {host: {ok, changed, failed, ...}}."""
    hosts = {}
    for line in out.splitlines():
        match = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line)
        if match:
            hosts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return hosts


def debug_messages(out: str, host: str) -> dict[str, object]:
    """The `msg` of every debug task that printed one for `host` in a playbook's output, by task name (the default
    callback prints `TASK [role : name] ***` and then `ok|changed: [host] => {...}` as indented JSON)."""
    found: dict[str, object] = {}
    task = None
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if match := re.match(r"^TASK \[(.+)\] \*+$", line):
            task = match.group(1)
        elif task and re.match(rf"^(ok|changed): \[{re.escape(host)}\] => \{{$", line):
            end = lines.index("}", i)
            found[task] = json.loads("{" + "\n".join(lines[i + 1:end]) + "}").get("msg")
    return found
