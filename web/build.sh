#!/usr/bin/env bash
# Regenerates the TypeScript types from ../proto (buf + protoc-gen-es, no system protoc),
# type-checks the page (tsc --noEmit) and bundles it with esbuild into
# crates/duplex-server/web/app.js, which `duplex serve` embeds (index.html and style.css
# there are sources, written by hand). The output is deterministic: scripts/test runs this
# and fails if the committed files differ.
# Needs node_modules: `npm ci` in web/ (scripts/test does it).
set -euo pipefail
cd "$(dirname "$0")"
bin=node_modules/.bin
[ -x "$bin/esbuild" ] || { echo "web/build.sh: run 'npm ci' in web/ first" >&2; exit 1; }

"$bin/buf" generate
"$bin/tsc" --noEmit -p .
"$bin/esbuild" src/main.ts \
    --bundle --format=esm --minify --target=es2022 \
    --legal-comments=none --charset=utf8 --log-level=warning \
    --outfile=../crates/duplex-server/web/app.js
