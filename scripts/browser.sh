#!/usr/bin/env bash
# Make sure the Chromium that tests/test_browser.py drives exists: Debian's package, never a
# Playwright download. RINDLE_TEST_CHROMIUM points the tests at another executable, and then
# this script only checks that it is there. Quiet when there is nothing to do.
set -euo pipefail

if [ -n "${RINDLE_TEST_CHROMIUM:-}" ]; then
    if [ -x "$RINDLE_TEST_CHROMIUM" ]; then exit 0; fi
    echo "browser.sh: RINDLE_TEST_CHROMIUM=$RINDLE_TEST_CHROMIUM is not an executable" >&2
    exit 1
fi

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then exit 0; fi

if [ "$(id -u)" != 0 ]; then
    echo "browser.sh: $CHROMIUM is missing and installing it needs root; run" >&2
    echo "    sudo apt-get install chromium" >&2
    echo "or set RINDLE_TEST_CHROMIUM to a Chromium executable" >&2
    exit 1
fi
echo "browser.sh: installing Chromium from Debian's packages"
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
test -x "$CHROMIUM"
