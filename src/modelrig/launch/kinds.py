"""The launch kinds: for each, its template, the file it renders to, how `start.sh` runs it, its default port,
health check, authentication and where a user reaches it. A new demo kind is a template plus one entry here (and
its name in the manifest schema's `LaunchKind`)."""

from __future__ import annotations

from dataclasses import dataclass

from modelrig.errors import LaunchError

_PYTHON_APP = 'exec "$ENV_PREFIX/bin/python" app.py --host "$MODELRIG_BIND" --port "$MODELRIG_PORT"'


@dataclass(frozen=True)
class LaunchKind:
    """What one launch kind is."""

    name: str
    #: The template under `launch/` and the file it renders to inside the entry folder.
    template: str
    script: str
    #: The last line of `start.sh`: how the rendered script runs in the model env.
    exec_line: str
    #: Port used when an entry names none; None for jobs that listen nowhere.
    default_port: int | None
    #: Path of the HTTP GET that answers 2xx once the app is ready; None: healthy while the process runs.
    health_path: str | None
    #: The secret a listener of this kind must have off loopback (API key or UI password); None: none of its own.
    auth_var: str | None
    #: No authentication at all: never listens beyond loopback.
    loopback_only: bool = False
    cuda_only: bool = False
    #: Where a user goes: the page of a UI, the `/v1` base of an API.
    url_path: str = "/"


KINDS: dict[str, LaunchKind] = {k.name: k for k in (
    LaunchKind("gradio_chat", "gradio_chat.py.j2", "app.py", _PYTHON_APP, 7860, "/", "MODELRIG_UI_AUTH"),
    LaunchKind("gradio_vision_chat", "gradio_vision_chat.py.j2", "app.py", _PYTHON_APP, 7860, "/",
               "MODELRIG_UI_AUTH"),
    LaunchKind("streamlit_chat", "streamlit_chat.py.j2", "app.py",
               'exec "$ENV_PREFIX/bin/python" -m streamlit run app.py --server.address "$MODELRIG_BIND" '
               '--server.port "$MODELRIG_PORT" --server.headless true --browser.gatherUsageStats false',
               8501, "/_stcore/health", "MODELRIG_UI_AUTH"),
    LaunchKind("openai_api", "openai_api.py.j2", "app.py", _PYTHON_APP, 8000, "/health", "MODELRIG_API_KEY",
               url_path="/v1"),
    LaunchKind("vllm_serve", "vllm_serve.sh.j2", "serve.sh", "exec /bin/sh serve.sh", 8000, "/health",
               "MODELRIG_API_KEY", cuda_only=True, url_path="/v1"),
    LaunchKind("upstream_script", "upstream_script.sh.j2", "serve.sh", "exec /bin/sh serve.sh", 8000, "/", None,
               loopback_only=True),
    LaunchKind("batch_caption", "batch_caption.py.j2", "app.py", 'exec "$ENV_PREFIX/bin/python" app.py "$@"', None,
               None, None),
)}


def launch_kind(name: str) -> LaunchKind:
    """The registry entry of a kind; LaunchError for a name the registry does not know."""
    try:
        return KINDS[name]
    except KeyError:
        raise LaunchError(f"unknown launch kind {name!r} (known: {', '.join(sorted(KINDS))})", code="usage",
                          kind=name) from None
