"""A Python client generated from the served OpenAPI document works against the live server.

Apps are meant to use clients generated from the document, so the document must suit the generators as they are,
not only validate. openapi-python-client (pinned in .ci/sdk-requirements.txt, installed by ``make sdk-tools`` into
.tools/sdk) generates a client here, and a session run with that client's own environment calls the operations
where generators had broken on our document: a JSON send and a multipart send with a file (a body of two media
types), the attachment download (several binary media types), the handoff queue's status filter (an enum
parameter), the optional body of a handoff request, an upload and a search, and a retry with an idempotency key
(a header the document declares). Every response must parse into the generated models.

Under ``make test`` the tools must be there (SUPPORT_TEST_SDK_REQUIRED=1); a bare ``pytest`` without them skips.
"""

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY

ROOT = Path(__file__).resolve().parents[2]
SDK_BIN = ROOT / ".tools" / "sdk" / "bin"

# Run by the generated client's environment (.tools/sdk): argv is the base URL and an admin key. It prints what it
# saw as one JSON object; a response that does not parse into its model raises.
SESSION = r"""
import json, sys
from io import BytesIO

from support_client import AuthenticatedClient
from support_client.api.conversations import download_attachment, send_message, start_conversation
from support_client.api.handoffs import list_handoffs, request_handoff
from support_client.api.knowledge import search_knowledge, upload_document
from support_client.models import (
    CustomerInput, IngestResponse, ProblemDetails, QueueStatus, SearchRequest, SendMessageFilesBody,
    SendMessageJsonBody, StartConversationRequest, TurnResource, UploadForm,
)
from support_client.types import File

client = AuthenticatedClient(base_url=sys.argv[1], token=sys.argv[2], raise_on_unexpected_status=True)
seen = {}

uploaded = upload_document.sync(client=client, body=UploadForm(
    file=File(payload=BytesIO(b"# Returns\n\nReturn unused chairs within 30 days for a full refund."),
              file_name="returns.md", mime_type="text/markdown"),
    external_id="sdk-returns",
))
assert isinstance(uploaded, IngestResponse), uploaded
seen["uploaded"] = uploaded.status.value
found = search_knowledge.sync(client=client, body=SearchRequest(query="return a chair for a refund"))
seen["search"] = [hit.external_id for hit in found.items]

started = start_conversation.sync(client=client, body=StartConversationRequest(
    customer=CustomerInput(external_id="sdk-customer")))
conversation = started.id

said = send_message.sync(conversation, client=client, body=SendMessageJsonBody(content="Can I return a chair?"),
                         idempotency_key="sdk-send-1")
assert isinstance(said, TurnResource), said
seen["json_send"] = [said.message.content, said.reply is not None]
# A retry with the key, an argument of the call (a client-wide header would go with every later call too).
again = send_message.sync(conversation, client=client, body=SendMessageJsonBody(content="Can I return a chair?"),
                          idempotency_key="sdk-send-1")
seen["retry"] = [again.duplicate, again.message.id == said.message.id]

attached = send_message.sync(conversation, client=client, body=SendMessageFilesBody(
    content="Here is my receipt.",
    files=[File(payload=BytesIO(b"Order 1234: one chair"), file_name="receipt.txt", mime_type="text/plain")],
))
assert isinstance(attached, TurnResource), attached
[attachment] = attached.message.attachments
seen["multipart_send"] = [attached.message.content, attachment.filename]

downloaded = download_attachment.sync(conversation, attachment.id, client=client)
assert not isinstance(downloaded, ProblemDetails), downloaded
seen["download"] = downloaded.payload.read().decode()

handed = request_handoff.sync(conversation, client=client)
seen["handoff_status"] = handed.status.value
queue = list_handoffs.sync(client=client, status=QueueStatus.PENDING_HUMAN)
seen["queue"] = [str(item.conversation_id) for item in queue.items]
seen["conversation"] = str(conversation)

print(json.dumps(seen))
"""


async def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a tool without blocking the live server, which shares this event loop; its output, or a failure."""
    process = await asyncio.create_subprocess_exec(
        *map(str, command), cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 180)
    text = output.decode(errors="replace")
    assert process.returncode == 0, f"{command[0]} failed:\n{text}"
    return text


@pytest.fixture
def generator() -> Path:
    tool = SDK_BIN / "openapi-python-client"
    if not tool.exists():
        if os.environ.get("SUPPORT_TEST_SDK_REQUIRED"):
            pytest.fail(f"{tool} is missing: `make sdk-tools` installs it")
        pytest.skip("the client generator is not installed (make sdk-tools)")
    return tool


async def test_a_generated_python_client_calls_the_service(
    generator: Path, live: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    document = (await http.get("/schema/openapi.json")).json()
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    environment = {**os.environ, "PATH": f"{SDK_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    generated = await run(
        generator, "generate", "--path", "openapi.json", "--output-path", "support_client", "--meta", "none",
        cwd=tmp_path, env=environment,
    )  # fmt: skip
    # Anything the generator could not turn into code it reports as a warning, and leaves out.
    assert "Warning" not in generated, generated
    (tmp_path / "session.py").write_text(SESSION)

    output = await run(SDK_BIN / "python", "session.py", live, ADMIN_KEY, cwd=tmp_path, env=environment)

    seen = json.loads(output.strip().splitlines()[-1])
    assert seen["uploaded"] == "created"
    assert seen["search"][0] == "sdk-returns"
    assert seen["json_send"] == ["Can I return a chair?", True]
    assert seen["retry"] == [True, True]
    assert seen["multipart_send"] == ["Here is my receipt.", "receipt.txt"]
    assert seen["download"] == "Order 1234: one chair"
    assert seen["handoff_status"] == "pending_human"
    assert seen["conversation"] in seen["queue"]


def test_the_tools_environment_is_apart_from_the_projects() -> None:
    # The generator brings pydantic, which Litestar would pick up: it must never be installed beside the app.
    assert not (Path(sys.prefix) / "bin" / "openapi-python-client").exists()
