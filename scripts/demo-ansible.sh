#!/usr/bin/env bash
# The offline demo driven by Ansible: playbooks/site.yml provisions this machine ($INVENTORY) with the demo model
# (model_manifests/demo-tiny-ziya.yaml): the toolkit env from a wheel built here, the model env, the weights from
# a local hub on loopback (tiny repos, one gated), the conversions, and a Gradio chat plus an OpenAI-compatible
# API. Then one chat request, and the URLs. A second run changes nothing (the recap says changed=0), and needs no
# network (the wheel is rebuilt only when the source changed).
# The local hub's URL and token are this run's only (model_weights_hf_endpoint / _hf_token: handed to the fetch as
# --hf-endpoint and HF_TOKEN), never written into the data root's config.yaml, so a later `modelrig fetch` there
# asks the public Hub (or a mirror set there), not the demo's stopped hub.
# The demo lives on modelrig's own default data root ($MODELRIG_HOME, else ~/.local/share/modelrig), so `modelrig
# status`, `down`, `up`, `lock` and `doctor` see it with no flag. Its own files (the local hub's repos, the wheel,
# the locks copied back) go under <data root>/demo-hub and <data root>/demo-ansible, never into this checkout.
# Knobs: MODELRIG_VENV (controller toolkit env, default .venv), MODELRIG_HOME (the data root), DEMO_HUB_PORT (the
# local hub's port, default 17890), DEMO_CHAT_PORT and DEMO_API_PORT (the demo's ports, default the manifest's 17860
# and 18000; they go to the host config's serve.ports, so `modelrig up` keeps them).
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOUT=$(pwd -P)
# The inventory of this machine: one variable, so moving the file is a one-line change.
INVENTORY="$CHECKOUT/local/localhost.yml"
VENV=${MODELRIG_VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$CHECKOUT/$VENV" ;; esac
# The demo's local hub's port (only this run's fetch uses it).
HUB_PORT=${DEMO_HUB_PORT:-17890}
CHAT_PORT=${DEMO_CHAT_PORT:-17860}
API_PORT=${DEMO_API_PORT:-18000}
BIN="$VENV/bin"
[ -x "$BIN/ansible-playbook" ] || { echo "demo-ansible: $BIN/ansible-playbook missing: run make setup" >&2; exit 1; }
DATA=$("$BIN/python" -c 'from modelrig.config import default_data_root; print(default_data_root().absolute())')
ROOT="$DATA/demo-ansible"
HUB="$DATA/demo-hub"
mkdir -p "$ROOT"
work=$(mktemp -d)
hub_pid=""
cleanup() {
  [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "demo-ansible: writing the tiny repos and serving them on loopback"
"$BIN/modelrig" -q hub make-tiny "$HUB" --only modelrig-tiny/llama-meta --only modelrig-tiny/ziya-delta
"$BIN/modelrig" hub serve "$HUB" --port "$HUB_PORT" --token-file "$HUB/.modelrig-hub-tokens" >"$work/hub.out" 2>&1 &
hub_pid=$!
for _ in $(seq 1 100); do grep -q http:// "$work/hub.out" 2>/dev/null && break; sleep 0.1; done
hub_url=$(grep -o 'http://[^ ]*' "$work/hub.out" | head -1)
[ -n "$hub_url" ] || { echo "demo-ansible: the local hub did not start: $(cat "$work/hub.out")" >&2; exit 1; }

# Local wheel folders from pip's configuration (a CPU torch wheel there is used instead of PyTorch's index).
links=$("$BIN/python" -m pip config list 2>/dev/null | sed -n "s/^[a-z:.]*find-links='\(.*\)'$/\1/p" | head -1)
links=${links:-${PIP_FIND_LINKS:-}}
torch_local=false
for dir in $links; do ls "$dir"/torch-*.whl >/dev/null 2>&1 && torch_local=true; done

# The token and the settings go in a 0600 vars file, never on a command line; the hub's only for this run's fetch.
umask 077
{
  echo "modelrig_models: [demo-tiny-ziya]"
  echo "modelrig_data_root: $DATA"
  echo "model_weights_hf_endpoint: $hub_url"
  echo "model_weights_hf_token: $(head -1 "$HUB/.modelrig-hub-tokens")"
  echo "modelrig_wheel_build_dir: $ROOT/wheel"
  echo "modelrig_uv_cache_dir: ${UV_CACHE_DIR:-$DATA/cache/uv}"
  echo "modelrig_locks_dir: $ROOT/locks"
  echo "modelrig_ports: {demo-tiny-ziya/chat: $CHAT_PORT, demo-tiny-ziya/api: $API_PORT}"
  echo "modelrig_pip:"
  echo "  index_url: ''"
  echo "  extra_index_urls: []"
  echo "  find_links: [$(for dir in $links; do printf "'%s', " "$dir"; done | sed 's/, $//')]"
  echo "  use_torch_index: $([ "$torch_local" = true ] && echo false || echo true)"
  if [ "$torch_local" = true ]; then echo "modelrig_torch_index_url: ''"; fi
} >"$work/vars.yml"

echo "demo-ansible: ansible-playbook playbooks/site.yml on this machine"
ANSIBLE_CONFIG="$CHECKOUT/ansible.cfg" "$BIN/ansible-playbook" -i "$INVENTORY" "$CHECKOUT/playbooks/site.yml" \
  -e "@$work/vars.yml" | tee "$work/site.out"
api=$(grep -o 'demo-tiny-ziya/api  http://[^ "]*' "$work/site.out" | awk '{print $2}' | tail -1)
[ -n "$api" ] || { echo "demo-ansible: no API URL in the playbook's report" >&2; exit 1; }
echo "demo-ansible: asking $api one question"
curl -sS --max-time 120 "$api/chat/completions" -H 'Content-Type: application/json' \
  -d "$("$BIN/python" -c 'import json; from modelrig.orchestrate.demo import PROMPT
print(json.dumps({"model": "demo-tiny-ziya", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64,
                  "temperature": 0}))')"
echo
# What to paste into a new login shell, anywhere: absolute paths, and the data root only when it is not the default.
flag=""
default=$(env -u MODELRIG_HOME HOME="$HOME" "$BIN/python" -c \
  'from modelrig.config import default_data_root; print(default_data_root().absolute())')
[ "$DATA" = "$default" ] || flag=" --data-root $DATA"
echo "demo-ansible: the demo runs from the data root $DATA; modelrig status, down, up, lock and doctor use it"
echo "demo-ansible: status: $BIN/modelrig$flag status demo-tiny-ziya"
echo "demo-ansible: stop the demo with: $BIN/modelrig$flag down demo-tiny-ziya"
