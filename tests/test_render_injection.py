"""No manifest value can inject code into rendered launch files.

A manifest full of hostile values the schema allows (quotes, backslashes, `$(...)`, backticks, `\"\"\"`, `{{`, `%`,
`</string>`, HTML and Markdown) is rendered for every launch kind, into folders and an environment whose paths are
hostile too. The apps are parsed and imported in a real UI environment (Gradio pages built, the Streamlit script
run), the start scripts are run (the model env's `python` / `vllm` record how they were started), the unit and
plist are read back: no payload runs (no canary file appears anywhere), and the text arrives verbatim where it
belongs. Values that can never be valid are refused by the schema with one `file:line: field: message` line.
"""

from __future__ import annotations

import ast
import html
import json
import os
import plistlib
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from modelrig.errors import LaunchError, ManifestError
from modelrig.launch.render import is_loopback, render
from modelrig.manifest import Manifest, load_manifest
from tests.helpers.launching import plan_for
from tests.helpers.venvs import CURRENT_UI

CANARY = "PWNED"

#: Runs in the UI env: import a rendered app as a module (main() does not run) and report what it holds; Gradio
#: pages are built, the Streamlit script is run by Streamlit's own AppTest.
PROBE = textwrap.dedent(r'''
    import importlib.util, json, sys
    path, kind = sys.argv[1], sys.argv[2]
    out = {}
    if kind == "streamlit_chat":
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file(path, default_timeout=120).run()
        out["exceptions"] = [str(e.value) for e in at.exception]
        out["title"] = [t.value for t in at.title]
        out["markdown"] = [m.value for m in at.sidebar.markdown]
        out["errors"] = [e.value for e in at.error]
    else:
        spec = importlib.util.spec_from_file_location("app", path)
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
        for name in ("TITLE", "MODEL_PATH", "OPTIONS", "ARCHITECTURE", "SERVED_NAME", "DEFAULT_PROMPT", "WEIGHTS"):
            if hasattr(app, name):
                out[name] = getattr(app, name)
        if kind.startswith("gradio"):
            demo = app.build(None)
            out["page_title"] = demo.title
            out["html"] = [b.value for b in demo.blocks.values() if type(b).__name__ == "HTML"]
    print(json.dumps(out))
''')

#: The model env's `python` and `vllm`: record the arguments they were started with (NUL-separated), exit 0.
RECORDER = "#!/bin/sh\nprintf '%s\\0' \"$(basename \"$0\")\" \"$@\" > \"$MODELRIG_TEST_RECORD\"\n"


def hostile(canary: Path) -> str:
    """Text that is code in every language a template writes, each payload creating `canary`."""
    return (f'x"""; __import__("os").system("touch {canary}")""" \'\'\'; __import__("os").system("touch {canary}") '
            f"\\ \\n $(touch {canary}) `touch {canary}` \"; touch {canary}; \" '; touch {canary}; ' "
            "{{ 7*7 }} {% raw %} %h %% ${HOME} </string> <b>bold</b> <script>alert(1)</script> **md** $x$ :smile:")


def hostile_manifest(canary: Path, pinned: str) -> Manifest:
    text = hostile(canary)
    options = {"greeting": text, "prompt": text, "custom": {text: [text]}}
    upstream = {"repo": "Example/demo", "ref": pinned, "script": "web_demo.py",
                "args": ["--title", text, "--model", "{weights}", "--server-name", "{bind}", "--server-port",
                         "{port}", f"--mix={{port}}'$(touch {canary})"]}
    return Manifest.model_validate({
        "id": "hostile", "title": text, "license": {"name": text}, "architecture": f"Arch$(touch {canary})'\"",
        "weights": {"model": {"local": {"var": "tiny_model"}}},
        "env": {"python": "3.11", "packages": [],
                "env": {"HOSTILE_ENV": f"$(touch {canary})`touch {canary}`'\"\\; touch {canary}"}},
        "resources": {"params_b": 0.001, "memory_gb": {"fp32": 0.1}},
        "launch": [
            {"name": "chat", "kind": "gradio_chat", "adapter": "chat_template", "port": 7861, "options": options},
            {"name": "vision", "kind": "gradio_vision_chat", "adapter": "llava", "port": 7862, "options": options},
            {"name": "streamlit", "kind": "streamlit_chat", "adapter": "chat_template", "port": 7863,
             "options": options},
            {"name": "api", "kind": "openai_api", "adapter": "chat_template", "port": 7864,
             "options": {**options, "served_model_name": text}},
            {"name": "vllm", "kind": "vllm_serve", "port": 7865,
             "options": {"served_model_name": text, "extra_args": [f"--x=$(touch {canary})", text]}},
            {"name": "web", "kind": "upstream_script", "port": 7866, "upstream": upstream,
             "options": {"cpu_flag": f"--cpu$(touch {canary})"}},
            {"name": "captions", "kind": "batch_caption", "adapter": "blip2", "options": options},
        ],
    })


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Every kind rendered from the hostile manifest into a hostile folder, with a hostile env path."""
    root = tmp_path_factory.mktemp("injection")
    canary = root / CANARY
    mirror = root / "mirror"
    mirror.mkdir()
    _git(mirror, "init", "-q")
    (mirror / "web_demo.py").write_text("print('demo')\n")
    _git(mirror, "add", ".")
    _git(mirror, "commit", "-qm", "demo")
    pinned = subprocess.run(["git", "-C", str(mirror), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    manifest = hostile_manifest(canary, pinned)
    odd = f"$(touch {CANARY}) `touch {CANARY}` 'q' \"dq\" %h $HOME \\ x"
    env_prefix = root / f"env {odd}"
    (env_prefix / "bin").mkdir(parents=True)
    for tool in ("python", "vllm"):
        (env_prefix / "bin" / tool).write_text(RECORDER)
        (env_prefix / "bin" / tool).chmod(0o755)
    weights = root / f"weights {odd}"
    out = root / f"out {odd}"
    env_vars = dict(manifest.env.env)
    entries = {}
    for entry in manifest.launch:
        platform = "cuda" if entry.kind == "vllm_serve" else "cpu"
        result = render(manifest, plan_for(manifest, platform=platform, env_vars=env_vars), out,
                        paths={"model": weights}, python=env_prefix / "bin" / "python", entries=[entry.name],
                        cache_dir=root / f"cache {odd}")
        entries[entry.name] = Path(result.details["entries"][entry.name]["dir"])
    return {"root": root, "canary": canary, "manifest": manifest, "entries": entries, "weights": weights,
            "mirror": mirror,
            "env_prefix": env_prefix, "text": hostile(canary)}


def _no_canary(root: Path) -> None:
    found = [str(p) for p in root.rglob(f"{CANARY}*")] + [str(p) for p in Path.cwd().glob(f"{CANARY}*")]
    assert not found, f"a payload ran: {found}"


def _code_without_strings(tree: ast.AST) -> str:
    """The module's code with every string constant blanked: what is left is what runs."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
        if isinstance(node, ast.JoinedStr):
            node.values = [v for v in node.values if not isinstance(v, ast.Constant)]
    return ast.unparse(tree)


@pytest.mark.slow
def test_every_kind_renders_hostile_values_as_inert_text(rendered):
    text, entries = rendered["text"], rendered["entries"]
    assert set(entries) == {"chat", "vision", "streamlit", "api", "vllm", "web", "captions"}
    for name, folder in entries.items():
        for file in folder.iterdir():
            if file.suffix == ".py":
                tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
                code = _code_without_strings(tree)
                assert CANARY not in code and "__import__" not in code, file
                strings = {n.value for n in ast.walk(ast.parse(file.read_text(encoding="utf-8")))
                           if isinstance(n, ast.Constant) and isinstance(n.value, str)}
                if name not in ("api", "captions"):
                    assert f"{text} ({name})" in strings, file  # TITLE, as given
                assert str(rendered["weights"]) in strings
                docstring = ast.get_docstring(tree) or ""
                assert CANARY not in docstring and "x\"\"\"" not in docstring
            elif file.suffix == ".sh":
                done = subprocess.run(["sh", "-n", str(file)], capture_output=True, text=True)
                assert done.returncode == 0, (file, done.stderr)
                for line in file.read_text(encoding="utf-8").splitlines():
                    if line.lstrip().startswith("#"):
                        assert CANARY not in line, (file, line)  # comments never carry values
            elif file.name == "entry.json":
                assert json.loads(file.read_text())["entry"] == name
    _no_canary(rendered["root"])


@pytest.mark.slow
def test_apps_import_and_build_pages_with_the_title_verbatim(rendered, venvs):
    python = venvs.get(CURRENT_UI)
    text, entries = rendered["text"], rendered["entries"]
    kinds = {e.name: e.kind for e in rendered["manifest"].launch}

    def probe(name: str, **env: str) -> dict:
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELRIG_")}
        run_env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", **env)
        done = subprocess.run([str(python), "-c", PROBE, str(entries[name] / "app.py"), kinds[name]],
                              capture_output=True, text=True, cwd=entries[name], timeout=300, env=run_env)
        assert done.returncode == 0, (name, done.stderr[-3000:])
        return json.loads(done.stdout.strip().splitlines()[-1])

    seen = {name: probe(name) for name, folder in entries.items() if (folder / "app.py").exists()}
    assert set(seen) == {"chat", "vision", "streamlit", "api", "captions"}
    for name in ("chat", "vision"):
        title = f"{text} ({name})"
        assert seen[name]["TITLE"] == title and seen[name]["page_title"] == title
        assert seen[name]["html"] == [f"<h2>{html.escape(title)}</h2>"]  # shown as given, not as markup
        assert seen[name]["ARCHITECTURE"] == f"Arch$(touch {rendered['canary']})'\""
        assert seen[name]["OPTIONS"]["custom"] == {text: [text]}
        assert seen[name]["MODEL_PATH"] == str(rendered["weights"])
    page = seen["streamlit"]
    assert page["exceptions"] == []
    unescape = lambda md: re.sub(r"\\(.)", r"\1", md)  # noqa: E731  (CommonMark backslash escapes)
    assert [unescape(t) for t in page["title"]] == [f"{text} (streamlit)"]
    assert [unescape(m.removeprefix("## ")) for m in page["markdown"]] == [f"{text} (streamlit)"]
    assert page["errors"] == []
    exposed = probe("streamlit", MODELRIG_BIND="0.0.0.0")  # off loopback without a password: the page stops
    assert exposed["title"] == [] and "without authentication" in exposed["errors"][0]
    assert probe("streamlit", MODELRIG_BIND="0.0.0.0", MODELRIG_UI_AUTH="u:p")["errors"] == []
    assert seen["api"]["SERVED_NAME"] == text
    assert seen["captions"]["DEFAULT_PROMPT"] == text
    _no_canary(rendered["root"])


def _run_start(folder: Path, record: Path, env: dict[str, str] | None = None) -> tuple[int, str, list[str]]:
    record.unlink(missing_ok=True)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELRIG_")}
    run_env.update(MODELRIG_TEST_RECORD=str(record), **(env or {}))
    done = subprocess.run(["/bin/sh", str(folder / "start.sh")], capture_output=True, text=True, cwd=folder,
                          env=run_env, timeout=120)
    argv = record.read_bytes().decode().split("\0")[:-1] if record.exists() else []
    return done.returncode, done.stderr, argv


def test_start_scripts_pass_hostile_values_as_single_arguments(rendered):
    text, entries, root = rendered["text"], rendered["entries"], rendered["root"]
    record = root / "argv"
    expected_tail = {
        "chat": ["app.py", "--host", "127.0.0.1", "--port", "7861"],
        "vision": ["app.py", "--host", "127.0.0.1", "--port", "7862"],
        "api": ["app.py", "--host", "127.0.0.1", "--port", "7864"],
        "captions": ["app.py"],
    }
    for name, tail in expected_tail.items():
        code, err, argv = _run_start(entries[name], record)
        assert code == 0, (name, err)
        assert argv == ["python", *tail]
    code, err, argv = _run_start(entries["streamlit"], record)
    assert code == 0, err
    assert argv[:6] == ["python", "-m", "streamlit", "run", "app.py", "--server.address"] and argv[6] == "127.0.0.1"
    code, err, argv = _run_start(entries["vllm"], record)
    assert code == 0, err
    assert argv[:3] == ["vllm", "serve", str(rendered["weights"])]
    assert argv[argv.index("--served-model-name") + 1] == text
    assert argv[-2:] == [f"--x=$(touch {rendered['canary']})", text]
    code, err, argv = _run_start(entries["web"], record, {"MODELRIG_UPSTREAM_MIRROR": str(rendered["mirror"])})
    assert code == 0, err
    assert argv == ["python", "web_demo.py", "--title", text, "--model", str(rendered["weights"]), "--server-name",
                    "127.0.0.1", "--server-port", "7866", f"--mix=7866'$(touch {rendered['canary']})",
                    f"--cpu$(touch {rendered['canary']})"]
    _no_canary(root)


def test_the_environment_of_the_start_script_is_set_verbatim(rendered):
    folder = rendered["entries"]["captions"]
    shutil.copy(folder / "start.sh", folder / "env-start.sh")
    script = (folder / "env-start.sh").read_text().replace(
        'exec "$ENV_PREFIX/bin/python" app.py "$@"', 'printf "%s\\0" "$HOSTILE_ENV" "$ENV_PREFIX" "$HF_HOME"')
    (folder / "env-start.sh").write_text(script)
    done = subprocess.run(["/bin/sh", str(folder / "env-start.sh")], capture_output=True, cwd=folder, timeout=60,
                          env={k: v for k, v in os.environ.items() if k not in ("HF_HOME", "MODELRIG_BIND")})
    assert done.returncode == 0, done.stderr
    value, prefix, hf_home = done.stdout.decode().split("\0")[:3]
    assert value == rendered["manifest"].env.env["HOSTILE_ENV"]
    assert prefix == str(rendered["env_prefix"])
    assert hf_home.endswith("/hf") and hf_home.startswith(str(rendered["root"] / "cache "))
    _no_canary(rendered["root"])


@pytest.mark.parametrize("bind", ["127.0.0.1$(touch PWNED)", "127.0.0.1`touch PWNED`", "0.0.0.0",
                                  "127.evil.example", "::", "'; touch PWNED; '"])
def test_a_bind_given_at_run_time_is_never_code_and_off_loopback_needs_auth(rendered, bind):
    entries, record = rendered["entries"], rendered["root"] / "argv-bind"
    for name, secret in (("chat", "MODELRIG_UI_AUTH"), ("vision", "MODELRIG_UI_AUTH"),
                         ("streamlit", "MODELRIG_UI_AUTH"), ("api", "MODELRIG_API_KEY"), ("vllm", "MODELRIG_API_KEY")):
        code, err, argv = _run_start(entries[name], record, {"MODELRIG_BIND": bind})
        assert code == 2 and argv == [], (name, bind, err)
        assert "refusing" in err and secret in err
        code, err, argv = _run_start(entries[name], record, {"MODELRIG_BIND": bind, secret: "user:pw"})
        assert code == 0, (name, err)
        assert bind in argv  # passed on as one argument, exactly as given
    code, err, argv = _run_start(entries["web"], record, {"MODELRIG_BIND": bind, "MODELRIG_API_KEY": "k"})
    assert code == 2 and "no authentication" in err and argv == []
    code, err, argv = _run_start(entries["captions"], record, {"MODELRIG_BIND": bind})
    assert code == 0 and argv == ["python", "app.py"]
    _no_canary(rendered["root"])
    assert not (entries["chat"] / CANARY).exists()


def test_loopback_binds_start_without_auth(rendered):
    for bind in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        code, err, argv = _run_start(rendered["entries"]["api"], rendered["root"] / "argv-lo", {"MODELRIG_BIND": bind})
        assert code == 0, err
        assert argv[argv.index("--host") + 1] == bind


def test_systemd_unit_and_launchd_plist_keep_hostile_paths_literal(rendered):
    folder = rendered["entries"]["chat"]
    unit = (folder / "modelrig-hostile-chat.service").read_text()
    assert f"WorkingDirectory={str(folder).replace('%', '%%')}\n" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    quoted = str(folder / "start.sh").replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    assert exec_start == f'ExecStart=/bin/sh "{quoted}"'
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze (Debian's systemd package) is needed: scripts/system-deps.sh"
    copy = rendered["root"] / "modelrig-hostile-chat.service"
    copy.write_text(unit)
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    problems = [line for line in done.stderr.splitlines() if copy.name in line or "Unknown" in line]
    assert not problems, done.stderr
    plist = plistlib.loads((folder / "ai.modelrig.hostile.chat.plist").read_bytes())
    assert plist["ProgramArguments"] == ["/bin/sh", f"{folder}/start.sh"]
    assert plist["WorkingDirectory"] == str(folder)
    _no_canary(rendered["root"])


def test_bind_must_be_an_address_and_127_prefixed_hostnames_are_not_loopback(rendered, tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("127.9.8.7") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("[::1]")
    for host in ("127.evil.example", "127.0.0.1.nip.io", "0.0.0.0", "::", "127.0.0.1$(touch x)"):
        assert not is_loopback(host), host
    manifest = rendered["manifest"]
    plan = plan_for(manifest)
    with pytest.raises(LaunchError, match=re.escape("cannot listen on '127.0.0.1$(touch x)'")):
        render(manifest, plan, tmp_path, paths={"model": tmp_path}, python="/e/bin/python", entries=["api"],
               bind="127.0.0.1$(touch x)")
    result = render(manifest, plan, tmp_path, paths={"model": tmp_path}, python="/e/bin/python", entries=["api"],
                    bind="127.evil.example")
    assert result.details["entries"]["api"]["secrets"]  # a generated API key: this is not loopback
    assert "MODELRIG_API_KEY=" in (tmp_path / "api" / "secrets.env").read_text()


# A valid manifest; each refusal below changes one value.
BASE = """\
id: m
title: M
license: {name: mit}
weights:
  model:
    huggingface: {repo: org/m, revision: main}
env:
  python: "3.10"
  env: {OMP_NUM_THREADS: "4"}
  platform:
    cpu: {env: {MKL_NUM_THREADS: "2"}}
resources:
  params_b: 1
  memory_gb: {fp16: 2}
launch:
  - {name: chat, kind: gradio_chat, adapter: chat_template, options: {bind: 127.0.0.1}}
  - name: web
    kind: upstream_script
    upstream: {repo: QwenLM/Qwen-VL, ref: 0123456789abcdef0123456789abcdef01234567, script: web_demo_mm.py}
"""

ENV_NAME = "expected an environment variable name: letters, digits, '_', not starting with a digit"
BIND = ("expected an IP address or a hostname to listen on, such as 127.0.0.1, 0.0.0.0, :: or gpu-box.local")
ONE_LINE = "must be one line of text: control characters (newline, tab, NUL, ...) are not allowed"
UPSTREAM_REPO = ("expected a repository 'owner/name' (letters, digits, '.', '_', '-') or a git URL or absolute path "
                 "without spaces or shell characters")

REFUSALS = [
    ("env_name", '{OMP_NUM_THREADS: "4"}', '{"X=1; touch P; Y": v}',
     f"9: env.env.X=1; touch P; Y: {ENV_NAME} (got 'X=1; touch P; Y')"),
    ("platform_env_name", '{MKL_NUM_THREADS: "2"}', '{"1BAD": "2"}',
     f"11: env.platform.cpu.env.1BAD: {ENV_NAME} (got '1BAD')"),
    ("bind_with_shell", "bind: 127.0.0.1}", "bind: '127.0.0.1$(touch P)'}",
     f"16: launch[0].options.bind: {BIND} (got '127.0.0.1$(touch P)')"),
    ("bind_with_space", "bind: 127.0.0.1}", "bind: '127.0.0.1 evil'}",
     f"16: launch[0].options.bind: {BIND} (got '127.0.0.1 evil')"),
    ("newline_in_title", "title: M", 'title: "M\\n__import__(1)"',
     f"2: title: {ONE_LINE} (got 'M\\n__import__(1)')"),
    ("nul_in_title", "title: M", 'title: "M\\0"',
     f"2: title: {ONE_LINE} (got 'M\\x00')"),
    ("newline_in_revision", "revision: main}", 'revision: "main\\nx"}',
     f"6: weights.model.huggingface.revision: {ONE_LINE} (got 'main\\nx')"),
    ("upstream_repo_with_command", "repo: QwenLM/Qwen-VL", "repo: 'QwenLM/Qwen-VL$(touch P)'",
     f"19: launch[1].upstream.repo: {UPSTREAM_REPO} (got 'QwenLM/Qwen-VL$(touch P)')"),
    ("upstream_script_as_option", "script: web_demo_mm.py", "script: '-cimport os'",
     "19: launch[1].upstream.script: expected a script path inside the repository (letters, digits, '.', '_', '/', "
     "'-'; not starting with '-') (got '-cimport os')"),
]


def test_the_base_manifest_is_valid(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(BASE)
    manifest = load_manifest(path)
    assert manifest.launch[0].options["bind"] == "127.0.0.1"


@pytest.mark.parametrize(("old", "new", "expected"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_values_that_can_never_be_valid_are_refused_in_one_line(tmp_path, cli, old, new, expected):
    assert old in BASE
    path = tmp_path / "m.yaml"
    path.write_text(BASE.replace(old, new, 1))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.problems == [f"{path}:{expected}"]
    code, out, err = cli("validate", path)
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"modelrig: error: {path}:{expected} [manifest_invalid]"]

