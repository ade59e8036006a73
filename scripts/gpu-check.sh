#!/usr/bin/env bash
# The CUDA branch on a real NVIDIA GPU, on a machine with no network (README "Platforms: what ran where").
#
#   scripts/gpu-check.sh --pack DIR [--python-version X.Y ...]   # here, with a package index: fill DIR
#   scripts/gpu-check.sh DIR OUT [--python PY]                   # on the GPU machine, no network needed
#
# --pack (scripts/gpu_pack.py, run with the toolkit env) puts into DIR the modelrig wheel, pip's wheel, the wheels
# of the toolkit's and the tiny demo API's dependencies without torch, and the demo's tiny hub repos.
# The check then, on the GPU machine, with PY its own Python with a CUDA torch (default: the first of python3,
# python, /usr/bin/python3, /opt/conda/bin/python whose torch sees a GPU):
#   1. stops with one line and exit 3 where no NVIDIA GPU answers `nvidia-smi -L`;
#   2. installs modelrig from DIR alone into a venv that sees PY's packages (so PY's torch), with pip run from
#      DIR's pip wheel: no index;
#   3. `modelrig facts --save` from the real nvidia-smi (OUT/facts.json, the command outputs in OUT/facts/);
#   4. `modelrig plan` of every shipped manifest on those facts (OUT/plan-<id>.json, exit codes in
#      OUT/plans.tsv: 0 planned, 3 refused with what would fit);
#   5. the tiny demo: its repos served on loopback, fetched, converted, its API entry rendered with
#      `render --python` of a venv over PY (the demo's packages from DIR, PY's CUDA torch), launched, asked one
#      question; the reply is checked to come from the GPU: the rendered device is cuda and nvidia-smi lists the
#      API's process on the GPU;
# and writes OUT/summary.json. Exit 0 only when every step passed. Takes a few minutes.
set -euo pipefail

say() { printf 'gpu-check: %s\n' "$*"; }
die() { printf 'gpu-check: %s\n' "$2" >&2; exit "$1"; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "${1:-}" = "--pack" ]; then
  shift
  [ $# -ge 1 ] || die 2 "usage: $0 --pack DIR [--python-version X.Y ...]"
  toolkit_python="${MODELRIG_TOOLKIT_PYTHON:-$here/../.venv/bin/python}"
  [ -x "$toolkit_python" ] || die 2 "no toolkit env at $toolkit_python: run \`make setup\` first (or set MODELRIG_TOOLKIT_PYTHON)"
  exec "$toolkit_python" "$here/gpu_pack.py" "$@"
fi

[ $# -ge 2 ] || die 2 "usage: $0 DIR OUT [--python PY]   (DIR made by: $0 --pack DIR)"
wheels="$(realpath -m "$1")"; out="$(realpath -m "$2")"; shift 2
python_arg=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || die 2 "--python needs a path"; python_arg="$2"; shift 2 ;;
    *) die 2 "unknown argument $1 (usage: $0 DIR OUT [--python PY])" ;;
  esac
done
[ -f "$wheels/pack.json" ] || die 2 "$wheels/pack.json: missing: DIR must be made by \`$0 --pack DIR\`"
mkdir -p "$out"
started=$(date +%s)

# 1. an NVIDIA GPU, through the real nvidia-smi
command -v nvidia-smi >/dev/null 2>&1 || die 3 "no NVIDIA GPU found: nvidia-smi is not on PATH"
if ! nvidia-smi -L >"$out/nvidia-smi-L.txt" 2>&1 || ! grep -q '^GPU [0-9]' "$out/nvidia-smi-L.txt"; then
  die 3 "no NVIDIA GPU found: nvidia-smi -L lists none ($(head -c 200 "$out/nvidia-smi-L.txt" | tr '\n' ' '))"
fi
say "$(head -n 1 "$out/nvidia-smi-L.txt")"

# the machine's own Python with a CUDA torch
probe='import sys, torch; assert torch.cuda.is_available(); print("%d.%d" % sys.version_info[:2], torch.__version__, torch.version.cuda)'
py=""
for candidate in ${python_arg:-python3 python /usr/bin/python3 /opt/conda/bin/python}; do
  if found="$("$candidate" -c "$probe" 2>/dev/null)"; then py="$(command -v "$candidate")"; break; fi
done
[ -n "$py" ] || die 4 "no Python whose torch sees the GPU (tried ${python_arg:-python3 python /usr/bin/python3 /opt/conda/bin/python}): pass --python PATH"
read -r pyver torch_version cuda_version <<<"$found"
say "python $py ($pyver), torch $torch_version, CUDA $cuda_version"
[ -f "$wheels/toolkit-$pyver.txt" ] || die 2 "$wheels has no wheels for Python $pyver: make it with \`$0 --pack DIR --python-version $pyver\`"

work="$out/work"
mkdir -p "$work"
pip_wheel="$(ls "$wheels"/pip-*.whl | head -n 1)"
# A venv that sees PY's own packages (its CUDA torch) through a .pth line, with `pkgs` installed from DIR alone.
make_env() {
  local env="$1"; shift
  rm -rf "$env"
  "$py" -m venv --without-pip "$env"
  local site; site="$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$py" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
    >"$site/machine-python.pth"
  "$env/bin/python" "$pip_wheel/pip" install --disable-pip-version-check --no-index --find-links "$wheels" "$@"
}
make_env "$work/toolkit" "$wheels"/modelrig-*.whl -c "$wheels/toolkit-$pyver.txt" >"$out/install-toolkit.log" 2>&1 \
  || die 5 "installing modelrig from $wheels failed: see $out/install-toolkit.log ($(tail -n 1 "$out/install-toolkit.log"))"
make_env "$work/demo-env" -r "$wheels/demo-$pyver.txt" >"$out/install-demo-env.log" 2>&1 \
  || die 5 "installing the demo's packages from $wheels failed: see $out/install-demo-env.log"
modelrig=("$work/toolkit/bin/modelrig" --data-root "$work/data")
# the check's own host config: its demo supervised by modelrig itself, on a port nothing else holds
mkdir -p "$work/data"
api_port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
printf 'serve:\n  supervisor: process\n  ports:\n    demo-tiny-ziya/api: %s\n' "$api_port" >"$work/data/config.yaml"
demo_python="$work/demo-env/bin/python"
"$demo_python" -c 'import torch; assert torch.cuda.is_available()' \
  || die 5 "the demo env does not see the GPU through $py's torch"

# 3. facts from the real nvidia-smi
"${modelrig[@]}" facts --json --save "$out/facts" >"$out/facts.json"
say "facts: $("$py" -c 'import json, sys; f = json.load(open(sys.argv[1])); print(json.dumps(f.get("gpus", f.get("nvidia", ""))))' "$out/facts.json" | head -c 300)"

# 4. plan every shipped manifest on those facts (exit 3: the planner refused, saying what would fit)
: >"$out/plans.tsv"
plans_ok=1
for id in $("${modelrig[@]}" list --json | "$py" -c 'import json, sys; print(" ".join(m["id"] for m in json.load(sys.stdin)["models"]))'); do
  rc=0
  "${modelrig[@]}" plan "$id" --facts "$out/facts.json" --json >"$out/plan-$id.json" 2>"$out/plan-$id.err" || rc=$?
  printf '%s\t%s\n' "$id" "$rc" >>"$out/plans.tsv"
  case "$rc" in 0|3) ;; *) plans_ok=0 ;; esac
done
say "plans (model, exit code): $(tr '\t\n' '= ' <"$out/plans.tsv")"

# 5. the tiny demo on the GPU
export HF_TOKEN
HF_TOKEN="$(head -n 1 "$wheels/hub/.modelrig-hub-tokens" | cut -d' ' -f1)"
"${modelrig[@]}" hub serve "$wheels/hub" --port 0 --token-file "$wheels/hub/.modelrig-hub-tokens" \
  >"$work/hub.out" 2>"$work/hub.err" &
hub_pid=$!
demo_pid=""
cleanup() {
  kill "$hub_pid" 2>/dev/null || true
  [ -z "$demo_pid" ] || "${modelrig[@]}" stop demo-tiny-ziya --supervisor process >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 150); do grep -q 'http://' "$work/hub.out" 2>/dev/null && break; sleep 0.2; done
hub_url="$(grep -m1 -o 'http://[^ ]*' "$work/hub.out" || true)"
[ -n "$hub_url" ] || die 6 "the tiny hub did not start: $(tail -n 1 "$work/hub.err")"
# one demo step: its JSON result in OUT/demo-NAME.json, its messages in OUT/demo-NAME.err
step() {
  local name="$1" verb="$2"; shift 2
  "${modelrig[@]}" "$verb" --json "$@" >"$out/demo-$name.json" 2>"$out/demo-$name.err" \
    || die 6 "the demo's $name failed: $(tail -n 1 "$out/demo-$name.err") (see $out/demo-$name.err)"
}
step fetch fetch demo-tiny-ziya --hf-endpoint "$hub_url"
step convert convert -- demo-tiny-ziya
step render render demo-tiny-ziya --entry api --python "$demo_python" --facts "$out/facts.json"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >"$out/gpu-memory-before.txt" 2>&1 || true
demo_pid=started
step launch launch demo-tiny-ziya api --supervisor process
step status status demo-tiny-ziya --supervisor process
device_ok=0
"$py" - "$out" "$wheels/pack.json" <<'EOF' || device_ok=$?
import json, subprocess, sys, urllib.request
from pathlib import Path
out, pack = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
entry = next(e for e in json.loads((out / "demo-status.json").read_text())["entries"] if e["entry"] == "api")
body = json.dumps({"model": pack["demo"], "messages": [{"role": "user", "content": pack["prompt"]}],
                   "max_tokens": 64, "temperature": 0}).encode()
request = urllib.request.Request(entry["url"] + "/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(request, timeout=300))
answer = reply["choices"][0]["message"]["content"]
result = {"answer": answer, "expected": pack["answer"], "word_for_word": answer.strip() == pack["answer"].strip()}
try:
    apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    result["gpu_compute_apps"] = [line.strip() for line in apps.splitlines() if line.strip()]
except (OSError, subprocess.SubprocessError) as exc:
    result["gpu_compute_apps"], result["nvidia_smi_error"] = [], str(exc)  # the first error is kept
on_gpu = {int(line.split(",")[0]) for line in result["gpu_compute_apps"]}
pid = int(entry["pid"])
kids = Path(f"/proc/{pid}/task/{pid}/children")
result["api_pids"] = sorted({pid, *map(int, kids.read_text().split() if kids.exists() else [])})
# in a container nvidia-smi may list the host's pids: the GPU memory the API's load took counts too
try:
    before = [int(x) for x in (out / "gpu-memory-before.txt").read_text().split()]
    now = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    result["gpu_memory_mib"] = {"before_launch": before, "after_reply": [int(x) for x in now.split()]}
    grown = max((b - a for a, b in zip(before, result["gpu_memory_mib"]["after_reply"])), default=0)
except (OSError, subprocess.SubprocessError, ValueError) as exc:
    result.setdefault("nvidia_smi_error", str(exc))
    grown = 0
result["on_gpu"] = bool(on_gpu & set(result["api_pids"])) or grown >= 100
(out / "demo-reply.json").write_text(json.dumps({"reply": reply, **result}, indent=2) + "\n")
print(json.dumps(result))
sys.exit(0 if answer.strip() and result["on_gpu"] else 1)
EOF
device="$(grep -rhoE 'MODELRIG_DEVICE=[^ ;]+' "$work/data/launch/demo-tiny-ziya" 2>/dev/null | head -n 1 | cut -d= -f2 | tr -d "'\"")"
[ "$device" = "cuda" ] || device_ok=1
"$py" - "$out/summary.json" "$device" "$device_ok" "$plans_ok" "$(( $(date +%s) - started ))" "$torch_version" \
  "$cuda_version" <<'EOF'
import json, sys
path, device, device_ok, plans_ok, seconds, torch, cuda = sys.argv[1:]
json.dump({"rendered_device": device, "demo_on_gpu": device_ok == "0", "plans_ok": plans_ok == "1",
           "seconds": int(seconds), "torch": torch, "cuda": cuda}, open(path, "w"), indent=2)
EOF
say "rendered device: ${device:-none}; summary: $out/summary.json"
[ "$device_ok" = 0 ] && [ "$plans_ok" = 1 ] || die 1 "the CUDA check failed: see $out/summary.json and $out/demo-reply.json"
say "passed in $(( $(date +%s) - started )) s"
