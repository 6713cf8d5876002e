#!/usr/bin/env bash
# Call `instit-edge serve` with curl: health, models, an image question (streamed), the marks alone.
#   instit-edge serve out/bundle --api-key-env INSTIT_KEY &
#   INSTIT_KEY=... demos/serve_curl.sh scene.jpg "What is [1] doing?"
set -euo pipefail
URL=${INSTIT_URL:-http://127.0.0.1:8080}
KEY=${INSTIT_KEY:-none}
IMG=${1:?usage: serve_curl.sh IMAGE [QUESTION]}
Q=${2:-What is [1] doing?}
MIME=$(file -b --mime-type "$IMG" 2>/dev/null || echo image/png)
B64=$(base64 -w0 "$IMG")
BODY=$(mktemp)
trap 'rm -f "$BODY"' EXIT

curl -fsS "$URL/health"; echo
curl -fsS "$URL/v1/models" -H "Authorization: Bearer $KEY"; echo

# the body goes through a file: a base64 image is too long for a command line
python3 - "$Q" "$MIME" "$IMG" > "$BODY" <<'PY'
import base64, json, sys
q, mime, path = sys.argv[1:4]
b64 = base64.b64encode(open(path, "rb").read()).decode()
print(json.dumps({"model": "bundle", "stream": True, "max_tokens": 64, "messages": [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64}"}}, {"type": "text", "text": q}]}]}))
PY
# -N: print the server-sent events as they come (data: {...chunk...} ... data: [DONE])
curl -fsSN "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
  --data-binary @"$BODY"

# marks only (static detector: plain backgrounds); IDs and boxes
printf '{"image": "data:%s;base64,%s", "mark": "static"}' "$MIME" "$B64" > "$BODY"
curl -sS "$URL/v1/instances" -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
  --data-binary @"$BODY"; echo
