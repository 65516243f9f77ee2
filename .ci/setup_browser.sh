#!/usr/bin/env bash
# Installs what the browser tests drive: Debian's headless-capable chromium and its matching
# chromedriver (tests/test_label_ui_browser.py). Nothing else downloads a browser. Needs root
# (or sudo) on a Debian or Ubuntu machine; a no-op when both are already installed.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
as_root=()
if [[ $(id -u) -ne 0 ]]; then
  as_root=(sudo)
fi
"${as_root[@]}" apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
