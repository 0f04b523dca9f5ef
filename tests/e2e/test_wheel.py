"""claude-relay as pip or pipx installs it: a wheel, in a fresh venv, beside python-daemon.

The wheel is built from exactly the files the Dockerfile copies, installed (not editable) into a
new venv together with `python-daemon` (whose import name, `daemon`, is also the name of one of
the relay's folders), and then used as a user would: `service install --dry-run` renders its
templates from package data, `doctor` checks the claude under test, and the installed console
script serves a request from the real claude CLI against the fake upstream.

Downloads happen once: the build tools and every dependency wheel are kept under
.cache/wheel-test/, and later runs build and install from there without the index. The venv is
made anew whenever a file that goes into the wheel changes, and reused while none does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anthropic
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from claude_relay.pty_pool import versions
from tests.support.claude_env import child_env, claude_bin, make_home
from tests.support.relay_proc import free_port, start_relay

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "wheel-test"
WHEELHOUSE = CACHE / "wheelhouse"
BESIDE = "python-daemon"
# A cold cache downloads the build tools and the dependencies; a warm one takes seconds.
SETUP_TIMEOUT = 240.0

pytestmark = [pytest.mark.timeout(300), pytest.mark.pin_only]


@dataclass(frozen=True)
class Install:
    venv: Path
    home: Path  # a scratch HOME: the service file and config dirs land there
    cwd: Path  # neither the checkout nor the venv, so `import daemon` cannot find the folder

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def relay(self) -> Path:
        return self.venv / "bin" / "claude-relay"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(HOME=str(self.home), **extra)
        return env


def run(*argv: str | Path, timeout: float = SETUP_TIMEOUT, check: bool = True) -> bool:
    proc = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stderr}")
    return proc.returncode == 0


def docker_sources() -> list[str]:
    """The files the Dockerfile copies into its build directory (`COPY <src>… ./<dest>`)."""
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "COPY" and words[-1].startswith("./"):
            sources += words[1:-1]
    return sources


def build_tools() -> Path:
    """A venv with the build requirements of pyproject.toml, made once and kept in the cache."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    tools = CACHE / "tools"
    stamp = tools / ".requires"
    if not stamp.exists() or stamp.read_text() != "\n".join(requires):
        shutil.rmtree(tools, ignore_errors=True)
        run(sys.executable, "-m", "venv", tools)
        run(tools / "bin" / "python", "-m", "pip", "install", "-q", *requires)
        stamp.write_text("\n".join(requires))
    return tools / "bin" / "python"


def copy_sources(src: Path) -> str:
    """Copy what the Dockerfile copies into `src`; return a digest of it (paths, links, bytes)."""
    for name in docker_sources():
        path = ROOT / name
        if path.is_dir():
            # symlinks=True: claude_relay/ links to the folders, as COPY keeps them
            shutil.copytree(
                path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(path, src / name)
    digest = hashlib.sha256(sys.version.encode())
    for path in sorted(src.rglob("*")):
        digest.update(str(path.relative_to(src)).encode() + b"\0")
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_wheel(tools: Path, src: Path, dist: Path) -> Path:
    run(tools, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src)
    (wheel,) = dist.glob("claude_relay-*.whl")
    return wheel


def install(tools: Path, wheel: Path, venv: Path) -> None:
    # No pip in the new venv: the tools' pip installs into it (--python), which saves a copy.
    # --no-compile: Python compiles what the tests import, not every module of every dependency.
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    pip: list[str | Path] = [tools, "-m", "pip", "--python", venv / "bin" / "python"]
    offline = [*pip, "install", "-q", "--no-compile", "--no-index", "--find-links", WHEELHOUSE]
    offline += [wheel, BESIDE]
    if run(*offline, check=False):
        return
    # Not yet cached (first run, or the dependencies changed): fill the wheelhouse from PyPI.
    run(tools, "-m", "pip", "download", "-q", "-d", WHEELHOUSE, wheel, BESIDE)
    (WHEELHOUSE / wheel.name).unlink(missing_ok=True)  # the relay itself is built every time
    run(*offline)


@pytest.fixture(scope="module")
def installed() -> Iterator[Install]:
    """The installed relay; its venv is kept for as long as no file that goes into the wheel
    changes, so the second e2e run of `./dev.sh test` (the other claude) reuses it."""
    tmp = Path(tempfile.mkdtemp(prefix="relay-wheel-"))
    try:
        src = tmp / "src"
        src.mkdir()
        venv = CACHE / f"venv-{copy_sources(src)}"
        if not (venv / ".complete").exists():
            for old in CACHE.glob("venv-*"):
                shutil.rmtree(old)
            tools = build_tools()
            install(tools, build_wheel(tools, src, tmp / "dist"), venv)
            (venv / ".complete").touch()
        home, cwd = tmp / "home", tmp / "cwd"
        make_home(home)
        cwd.mkdir()
        yield Install(venv, home, cwd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_installed(inst: Install, *argv: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
        cwd=inst.cwd,
        env=inst.env(**env),
        stdin=subprocess.DEVNULL,
    )


def test_installs_beside_python_daemon(installed: Install) -> None:
    script = (
        "import json, daemon, claude_relay, claude_relay.daemon.cli\n"
        "from importlib import resources\n"
        "from claude_relay.pty_pool import versions\n"
        "data = resources.files('claude_relay') / 'packaging'\n"
        "print(json.dumps({'daemon': daemon.__file__, 'relay': claude_relay.__file__,\n"
        "  'context': hasattr(daemon, 'DaemonContext'),\n"
        "  'pin': [(data / n).read_text().strip() for n in ('claude-cli-oldest',\n"
        "          'claude-cli-version')], 'tested': list(versions.TESTED)}))\n"
    )
    proc = run_installed(installed, installed.python, "-c", script)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    site = str(installed.venv)
    assert seen["context"] is True  # python-daemon's own package, not the relay's folder
    assert seen["daemon"].startswith(site) and "/site-packages/daemon/" in seen["daemon"]
    assert seen["relay"].startswith(site) and "/site-packages/claude_relay/" in seen["relay"]
    assert seen["pin"] == seen["tested"] == list(versions.TESTED)


@pytest.mark.parametrize(
    ("platform", "marker"),
    [("linux", "ExecStart="), ("macos", "<key>ProgramArguments</key>")],
)
def test_service_install_dry_run(installed: Install, platform: str, marker: str) -> None:
    proc = run_installed(
        installed, installed.relay, "service", "install", "--dry-run", "--platform", platform
    )
    assert proc.returncode == 0, proc.stderr
    assert marker in proc.stdout
    assert "@" + "EXEC_START@" not in proc.stdout  # every placeholder was filled
    assert str(installed.relay) in proc.stdout  # the service runs this installation's script
    assert "# would write " in proc.stderr
    assert not (installed.home / ".config" / "systemd").exists()  # a dry run writes nothing


async def test_doctor_and_one_request(installed: Install) -> None:
    async with FakeUpstream() as up:
        env = child_env(installed.home, up.url)
        env = {k: v for k, v in env.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["CLAUDE_RELAY_CLAUDE_BIN"] = shutil.which(claude_bin()) or claude_bin()
        env["CLAUDE_RELAY_PORT"] = str(free_port())
        proc = await asyncio.create_subprocess_exec(
            installed.relay,
            "doctor",
            "--json",
            cwd=installed.cwd,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(40):
            out, err = await proc.communicate()
        assert proc.returncode == 0, out.decode() + err.decode()
        checks = {c["name"]: c for c in json.loads(out)["checks"]}
        assert checks["claude"]["status"] == "ok"
        assert any(f"version {v}" in checks["claude"]["detail"] for v in versions.TESTED)
        assert checks["login"]["detail"].startswith("api_key")
        assert checks["service"]["status"] == "ok"

        up.push(Reply(text="Served from the wheel."))
        async with (
            start_relay(up, home=installed.home, relay_bin=str(installed.relay)) as relay,
            anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk,
        ):
            msg = await sdk.messages.create(
                model="default", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
            assert [(b.type, getattr(b, "text", None)) for b in msg.content] == [
                ("text", "Served from the wheel.")
            ]
            # prometheus_client is a runtime dependency now: the installed daemon serves metrics
            async with aiohttp.ClientSession() as s, s.get(relay.url + "/metrics") as r:
                assert r.status == 200
                assert "\nprocess_resident_memory_bytes " in await r.text()
