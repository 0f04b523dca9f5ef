"""The injection corpus: prompt text that claude's input handling would turn into an action.

Every case goes through the daemon to the real claude (each tested version, ./dev.sh test) and
must arrive upstream as one ordinary prompt: no file read (`@path` in all its forms, after every
character claude's mention pattern treats as a word break), no command run (`!`, bash mode), no
slash command, no early end of the paste, no swallowed Enter. The secret is a file the daemon's
user can read; the marker is a file a command would create.
"""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from claude_relay.daemon.selftest import SECRET
from claude_relay.daemon.selftest import injection_corpus as corpus
from tests.support.relay_proc import Relay

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("injection")
    secret = d / "secret.txt"
    secret.write_text(SECRET + "\n")
    return secret, d / "marker"


def _ids() -> list[str]:
    return [name for name, _ in corpus(Path("/s"), Path("/m"))]


@pytest.mark.parametrize("index", range(len(_ids())), ids=_ids())
async def test_prompt_text_never_acts(
    relay: Relay, up: FakeUpstream, targets: tuple[Path, Path], index: int
) -> None:
    secret, marker = targets
    name, prompt = corpus(secret, marker)[index]
    home_secret = relay.home / "secret.txt"
    home_secret.write_text(SECRET + "\n")
    (relay.workspace / "secret.txt").write_text(SECRET + "\n")
    up.push(Reply(text=f"answer to {name}"))
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        reply = await sdk.messages.create(
            model="default", max_tokens=50, messages=[{"role": "user", "content": prompt}]
        )
    # one ordinary turn: the prompt reached the model (nothing swallowed it) and was answered
    assert reply.content[0].text == f"answer to {name}"  # type: ignore[union-attr]
    assert len(up.main_requests) == 1
    for r in up.all_requests:
        assert SECRET.encode() not in r.raw_body, name
        assert b"Called the Read tool" not in r.raw_body, name
        assert b"<bash-input>" not in r.raw_body, name
    assert not marker.exists(), name
    assert not (relay.workspace / "marker").exists()
