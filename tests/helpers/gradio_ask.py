"""Ask a Gradio chat app through the real `gradio_client` of the env this runs in; print each chat as JSON pairs.

Usage: python gradio_ask.py URL API_NAME CALLS_JSON [IMAGE_INDEX [USER:PASSWORD]]. CALLS_JSON is a list of input
lists, sent in order by one client (one session, so history carries over); the input at IMAGE_INDEX (-1: none) is
a local image path, passed as a file the way this client version expects. The app's named API endpoints are
printed too.
"""

import atexit
import json
import os
import shutil
import sys
import tempfile

# The client's downloads (gradio_client 0.x hands a Chatbot value over as a JSON file) go to a folder of its own,
# removed at the end, not into <temp folder>/gradio.
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="gradio-client-")
atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], True)

import gradio_client  # noqa: E402
from gradio_client import Client  # noqa: E402

url, api_name, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
index = int(sys.argv[4]) if len(sys.argv) > 4 else -1
auth = tuple(sys.argv[5].split(":", 1)) if len(sys.argv) > 5 else None
client = Client(url, verbose=False, auth=auth) if auth else Client(url, verbose=False)


def pairs_of(chat):
    if isinstance(chat, str):  # gradio_client 0.x hands the Chatbot value over as a JSON file
        with open(chat, encoding="utf-8") as f:
            chat = json.load(f)
    if not chat or not isinstance(chat[0], dict):
        return [list(p) for p in chat]
    pairs = []
    for message in chat:  # the messages format
        content = message["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if message["role"] == "user":
            pairs.append([content, None])
        else:
            pairs[-1][1] = content
    return pairs


chats = []
for args in calls:
    if index >= 0 and hasattr(gradio_client, "handle_file"):
        args[index] = gradio_client.handle_file(args[index])
    chats.append(pairs_of(client.predict(*args, api_name=api_name)[1]))
api = client.view_api(return_format="dict", print_info=False) or {}
print(json.dumps({"gradio_client": gradio_client.__version__, "chats": chats,
                  "endpoints": sorted(api.get("named_endpoints", {}))}))
