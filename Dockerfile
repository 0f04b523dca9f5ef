# claude-relay in a container, for people who want one (docs/operations.md#docker).
# Limits: claude's login must live in the /home/relay volume (log in once inside the container,
# or mount a Linux ~/.claude + ~/.claude.json); the relay listens on 0.0.0.0 here, so it refuses
# to start without CLAUDE_RELAY_API_KEYS.
#   docker build -t claude-relay .
#   docker run --rm -it -v claude-relay-home:/home/relay --entrypoint claude claude-relay   # /login
#   docker run -d --name claude-relay -p 127.0.0.1:7421:7421 -v claude-relay-home:/home/relay \
#     -e CLAUDE_RELAY_API_KEYS=change-me claude-relay
FROM python:3.12-slim-bookworm

# nodejs/npm install the claude CLI (its native binary arrives as an npm optional dependency);
# tini is PID 1, so processes orphaned by claude are reaped and SIGTERM reaches the daemon.
# Unpinned on purpose: Debian stable only ships security fixes, which a pin would keep out.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The claude version the relay is tested with; another one may draw its screen differently.
COPY packaging/claude-cli-version /tmp/claude-cli-version
RUN npm install -g --no-audit --no-fund \
        "@anthropic-ai/claude-code@$(cat /tmp/claude-cli-version)" \
    && npm cache clean --force

WORKDIR /opt/claude-relay
# What the wheel is built from: claude_relay/ holds symlinks to the code folders and to packaging/
# (COPY keeps them as links). tests/e2e/test_wheel.py builds and installs from exactly this list.
COPY pyproject.toml README.md LICENSE ./
COPY claude_relay ./claude_relay
COPY daemon ./daemon
COPY pty_pool ./pty_pool
COPY protocols ./protocols
COPY packaging ./packaging
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 1000 relay
# Numeric, so orchestrators can check it is not root without reading /etc/passwd.
USER 1000:1000
ENV HOME=/home/relay \
    CLAUDE_RELAY_HOST=0.0.0.0 \
    CLAUDE_RELAY_PORT=7421 \
    DISABLE_AUTOUPDATER=1
# claude's login and settings (~/.claude, ~/.claude.json) and the relay's workspace and state.
VOLUME ["/home/relay"]
EXPOSE 7421
# Health needs no API key.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:7421/v1/health', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "claude-relay"]
CMD ["serve"]
