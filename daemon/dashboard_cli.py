"""`claude-relay dashboard`: print the live dashboard's URL and open it in a browser.

The URL is where the config says the daemon listens (or `--url`). An API key is never put in the
URL, where browser history and logs would keep it: with keys configured the page asks for one.
"""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser

from claude_relay.daemon import ctl
from claude_relay.daemon.config import ConfigError, load_config, resolve_config_file


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    try:
        config = load_config(
            argv_overrides={}, env=env, config_file=resolve_config_file(args.config, env)
        )
    except ConfigError as exc:
        print(f"claude-relay: error: {exc}", file=sys.stderr)
        return 2
    url = (args.url or ctl.base_url(config)).rstrip("/") + "/dashboard"
    print(url)
    if config.key_list() or args.api_key:
        print("the page asks for an API key (kept for this browser tab only)", file=sys.stderr)
    if not args.no_open and not webbrowser.open(url):
        print("claude-relay: no browser could be started; open the URL above", file=sys.stderr)
    return 0
