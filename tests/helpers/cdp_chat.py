"""Drive a chat page in headless Chromium over the DevTools protocol: type, click, wait for the answer, screenshot.

Usage: python cdp_chat.py URL MESSAGE BUTTON_TEXT SCREENSHOT.png [IMAGE]. Runs in any env with `websockets`
(>= 11, for its sync client). Prints JSON: {"user": [...], "bot": [...], "title": ...}.
"""

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from websockets.sync.client import connect

url, message, button, screenshot = sys.argv[1:5]
image = sys.argv[5] if len(sys.argv) > 5 else None


TYPE = """(() => {
    const box = [...document.querySelectorAll('textarea')].find(t => t.offsetParent !== null);
    const setter = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set;
    setter.call(box, MESSAGE);
    box.dispatchEvent(new Event('input', {bubbles: true}));
    return true; })()"""
CLICK = "[...document.querySelectorAll('button')].find(b => b.innerText.trim() === LABEL).click()"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


port = free_port()
# The browser's profile, and its own temp files (org.chromium.Chromium.*, else left in the system temp folder when
# it is stopped) inside it, all removed at the end. Chromium's singleton socket lives there, and a Unix socket's path
# has at most 107 bytes: a test session's temp folder (pytest's basetemp, one more level under a worker of
# pytest-xdist) is too deep for it, so the profile goes to the machine's own temp root when the session's is long.
session_tmp = tempfile.gettempdir()
# "/cdp-XXXXXXXX/.org.chromium.Chromium.XXXXXX/SingletonSocket" adds 59 bytes to the folder's path.
profile = tempfile.mkdtemp(prefix="cdp-", dir=session_tmp if len(session_tmp) + 59 <= 107 else "/tmp")
browser = subprocess.Popen(
    ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
     "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
     f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "--window-size=1280,1000", "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": profile},
    start_new_session=True)
try:
    deadline = time.time() + 60
    while True:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
            target = json.load(urllib.request.urlopen(request, timeout=2))
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)
    ws = connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
    counter = [0]

    def call(method, **params):
        counter[0] += 1
        ident = counter[0]
        ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            reply = json.loads(ws.recv(timeout=60))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(expression):
        result = call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(expression, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = js(expression)
            if value:
                return value
            time.sleep(0.3)
        raise TimeoutError(f"page never satisfied: {expression}")

    call("Page.enable")
    call("Page.navigate", url=url)
    wait_for("!!document.querySelector('textarea')")
    if image:
        root = call("DOM.getDocument", depth=-1, pierce=True)["root"]["nodeId"]
        node = call("DOM.querySelector", nodeId=root, selector="input[type=file]")["nodeId"]
        call("DOM.setFileInputFiles", nodeId=node, files=[image])
        wait_for("!!document.querySelector('img[src*=\"file\"], img[src^=\"data:\"], img[src*=\"upload\"]')")
        time.sleep(1.0)
    time.sleep(2.0)  # let the app finish wiring its event handlers
    texts = "(sel) => [...document.querySelectorAll(sel)].map(e => e.innerText.trim()).filter(t => t)"
    bot = None
    for attempt in range(3):
        js(TYPE.replace("MESSAGE", json.dumps(message)))
        time.sleep(0.5)
        js(CLICK.replace("LABEL", json.dumps(button)))
        try:
            bot = wait_for(f"(({texts})('[data-testid=bot]'))", timeout=60)
            break
        except TimeoutError:
            if attempt == 2:
                raise
    user = js(f"(({texts})('[data-testid=user]'))")
    time.sleep(0.5)
    shot = call("Page.captureScreenshot", format="png")["data"]
    with open(screenshot, "wb") as f:
        f.write(base64.b64decode(shot))
    print(json.dumps({"user": user, "bot": bot, "title": js("document.title")}))
    ws.close()
finally:
    # The browser and its helper processes (its own process group), then their folder once none writes there.
    os.killpg(browser.pid, signal.SIGTERM)
    try:
        browser.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(browser.pid, signal.SIGKILL)
    browser.wait()
    for _ in range(40):
        shutil.rmtree(profile, ignore_errors=True)
        if not os.path.exists(profile):
            break
        time.sleep(0.25)
