"""Stand-ins for the installers that cannot be downloaded here (Miniforge, rustup-init), served on loopback.

Each stand-in keeps the real program's command-line interface, so the roles and the engine run their real
commands against it:

- `Miniforge3-<version>-<platform>.sh -b -p PREFIX` lays out PREFIX with `bin/conda` and refuses an existing
  PREFIX, as the real installer does. That `conda` appends each call (one JSON list a line) to
  `PREFIX/conda-calls.jsonl`; `conda create -p PATH ... python=X.Y` makes PATH a venv of this machine's
  `pythonX.Y`, so a model env can be built in it.
- `rustup-init -y --no-modify-path --profile minimal --default-toolchain V` creates
  `$RUSTUP_HOME/toolchains/V-<host triple>` and `$CARGO_HOME/bin/{cargo,rustc}`, and records its arguments and the
  RUSTUP_DIST_SERVER / RUSTUP_UPDATE_ROOT it was given in `$CARGO_HOME/rustup-init-call.json`.

`served(folder)` serves a folder over HTTP on 127.0.0.1 (a free port) and logs each requested path (`HEAD /path`
for a HEAD request).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

MINIFORGE_INSTALLER = r"""#!/bin/bash
# Stand-in for a Miniforge3 installer (modelrig tests): same batch-mode interface, lays out a prefix.
set -eu
batch=0 prefix="$HOME/miniforge3"
while [ $# -gt 0 ]; do
  case "$1" in
    -b) batch=1 ;;
    -p) shift; prefix="$1" ;;
    *) echo "ERROR: did not recognize option '$1'" >&2; exit 1 ;;
  esac
  shift
done
[ "$batch" = 1 ] || { echo "stand-in: only batch mode (-b)" >&2; exit 1; }
if [ -e "$prefix" ]; then echo "ERROR: File or directory already exists: '$prefix'" >&2; exit 1; fi
mkdir -p "$prefix/bin" "$prefix/conda-meta"
cat > "$prefix/bin/conda" <<'CONDA'
#!/usr/bin/python3
import json, os, subprocess, sys
root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
with open(os.path.join(root, "conda-calls.jsonl"), "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
args = sys.argv[1:]
if args[:1] == ["--version"]:
    print("conda 25.3.0")
elif args[:1] == ["create"]:
    path = args[args.index("-p") + 1]
    version = next(a.split("=", 1)[1] for a in args if a.startswith("python="))
    subprocess.run(["python" + version, "-m", "venv", "--without-pip", path], check=True)
else:
    sys.exit("conda stand-in: unsupported call %r" % (args,))
CONDA
chmod 0755 "$prefix/bin/conda"
echo "installation finished."
"""

RUSTUP_INIT = r"""#!/usr/bin/python3
# Stand-in for rustup-init (modelrig tests): same flags, lays out a toolchain and cargo/rustc that print versions.
import json, os, platform, sys
args = sys.argv[1:]
toolchain = args[args.index("--default-toolchain") + 1]
machine = {"arm64": "aarch64"}.get(platform.machine(), platform.machine())
host = machine + ("-apple-darwin" if sys.platform == "darwin" else "-unknown-linux-gnu")
rustup_home = os.environ.get("RUSTUP_HOME", os.path.expanduser("~/.rustup"))
cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
os.makedirs(os.path.join(rustup_home, "toolchains", toolchain + "-" + host), exist_ok=True)
os.makedirs(os.path.join(cargo_home, "bin"), exist_ok=True)
for tool in ("cargo", "rustc"):
    path = os.path.join(cargo_home, "bin", tool)
    with open(path, "w") as out:
        out.write("#!/bin/sh\necho '%s %s (stand-in)'\n" % (tool, toolchain))
    os.chmod(path, 0o755)
with open(os.path.join(cargo_home, "rustup-init-call.json"), "w") as out:
    json.dump({"args": args, "RUSTUP_DIST_SERVER": os.environ.get("RUSTUP_DIST_SERVER"),
               "RUSTUP_UPDATE_ROOT": os.environ.get("RUSTUP_UPDATE_ROOT")}, out)
print("Rust is installed now. Great!")
"""


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_miniforge_release(root: Path, version: str, platforms: list[str], *, publish_sha256: bool = True) -> Path:
    """`root/<version>/Miniforge3-<version>-<platform>.sh` stand-ins (with their `.sha256` beside them, as the
    release publishes them); returns `root/<version>`."""
    folder = root / version
    folder.mkdir(parents=True, exist_ok=True)
    for platform in platforms:
        name = f"Miniforge3-{version}-{platform}.sh"
        installer = folder / name
        installer.write_text(MINIFORGE_INSTALLER)
        if publish_sha256:
            (folder / f"{name}.sha256").write_text(f"{sha256_of(installer)}  {name}\n")
    return folder


def write_rustup_archive(update_root: Path, version: str, targets: list[str]) -> None:
    """`<update root>/archive/<version>/<target>/rustup-init` stand-ins with their `rustup-init.sha256`."""
    for target in targets:
        folder = update_root / "archive" / version / target
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "rustup-init").write_text(RUSTUP_INIT)
        (folder / "rustup-init.sha256").write_text(f"{sha256_of(folder / 'rustup-init')}  *rustup-init\n")


@dataclass
class Served:
    """A folder served on loopback: its base URL and the paths requested so far."""

    url: str
    requests: list[str] = field(default_factory=list)


@contextmanager
def served(folder: Path) -> Iterator[Served]:
    """Serve `folder` over HTTP on 127.0.0.1 at a free port until the block ends."""
    record = Served(url="")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            record.requests.append(self.path)
            super().do_GET()

        def do_HEAD(self) -> None:
            record.requests.append(f"HEAD {self.path}")
            super().do_HEAD()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    record.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
