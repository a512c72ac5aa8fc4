#!/usr/bin/env bash
# Build the Uppy bundle that the examples serve at /uppy.js and tests/test_browser.py drives:
# the exact versions in scripts/uppy/package.json (and its lock file) from the npm registry,
# bundled with esbuild into .cache/uppy/uppy.js (Core + AwsS3) and uppy-dashboard.js and .css
# (the same with the Dashboard UI). Nothing is fetched by the pages at run time.
# Quiet when the bundle is already built from the same package files.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SOURCE="$ROOT/scripts/uppy"
CACHE="${RINDLE_UPPY_CACHE:-$ROOT/.cache/uppy}"
FILES=(package.json package-lock.json entry.js dashboard.js)
STAMP="$(cd "$SOURCE" && cat "${FILES[@]}" | sha256sum | cut -d' ' -f1)"

if [ -f "$CACHE/uppy.js" ] && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$STAMP" ]; then exit 0; fi
if ! command -v npm >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "uppy.sh: npm is missing and installing it needs root; run" >&2
        echo "    sudo apt-get install nodejs npm" >&2
        exit 1
    fi
    echo "uppy.sh: installing Node.js and npm from Debian's packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
echo "uppy.sh: installing Uppy from npm into $CACHE"
mkdir -p "$CACHE"
(cd "$SOURCE" && cp "${FILES[@]}" "$CACHE/")
(cd "$CACHE" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
for entry in entry:uppy dashboard:uppy-dashboard; do
    "$CACHE/node_modules/.bin/esbuild" "$CACHE/${entry%%:*}.js" --bundle --minify --format=iife \
        --target=es2020 --log-level=warning --outfile="$CACHE/${entry##*:}.js"
done
echo "$STAMP" > "$CACHE/stamp"
