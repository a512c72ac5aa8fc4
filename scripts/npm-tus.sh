#!/usr/bin/env bash
# Install the browser tus client tests/test_browser.py injects into the example page:
# tus-js-client, pinned, from the npm registry, into var/npm-tus (git-ignored). The page loads
# it from the test (Playwright's add_script_tag), never from outside the machine at run time.
# Quiet when it is already there.
set -euo pipefail

VERSION=4.3.1
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${RINDLE_TEST_NPM_TUS:-$HERE/var/npm-tus}"
PACKAGE="$PREFIX/node_modules/tus-js-client/package.json"

if [ -f "$PACKAGE" ] && grep -q "\"version\": \"$VERSION\"" "$PACKAGE"; then exit 0; fi
if ! command -v npm >/dev/null; then
    echo "npm-tus.sh: npm is missing; install Node.js 20 (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
echo "npm-tus.sh: installing tus-js-client@$VERSION into $PREFIX"
mkdir -p "$PREFIX"
npm install --silent --no-audit --no-fund --prefix "$PREFIX" "tus-js-client@$VERSION" >/dev/null
test -f "$PREFIX/node_modules/tus-js-client/dist/tus.min.js"
