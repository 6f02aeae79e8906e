#!/usr/bin/env bash
# Documented check: the standalone HTML report opens in headless Chromium and shows its
# plots. Renders REPORT (default out/run/report.html) to a PNG screenshot and checks that
# every embedded image decoded (naturalWidth > 0) via Chromium's DOM dump.
# Needs Debian's chromium: apt-get install -y chromium
set -euo pipefail
REPORT=$(realpath "${1:-out/run/report.html}")
SHOT=${2:-${REPORT%.html}-screenshot.png}
CHROME=${CHROME:-$(command -v chromium || command -v chromium-browser || command -v google-chrome)}
FLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars)
"$CHROME" "${FLAGS[@]}" --window-size=1200,2600 --screenshot="$SHOT" "file://$REPORT" 2>/dev/null
# A tiny page that loads the report in an iframe is not needed: --dump-dom after a script
# that reports image sizes is enough.
PROBE=$(mktemp --suffix=.html)
cat > "$PROBE" <<HTML
<html><body><iframe id=f src="file://$REPORT" style="width:1200px;height:2000px"></iframe>
<pre id=out>pending</pre><script>
document.getElementById('f').onload = () => {
  const imgs = [...document.getElementById('f').contentDocument.images];
  document.getElementById('out').textContent = 'images ' + imgs.length + ' decoded ' +
    imgs.filter(i => i.complete && i.naturalWidth > 0).length;
};
</script></body></html>
HTML
RESULT=$("$CHROME" "${FLAGS[@]}" --allow-file-access-from-files --virtual-time-budget=5000 --dump-dom "file://$PROBE" 2>/dev/null \
         | grep -o 'images [0-9]* decoded [0-9]*')
echo "$RESULT; screenshot: $SHOT"
read -r _ total _ decoded <<< "$RESULT"
[ "$total" -gt 0 ] && [ "$total" = "$decoded" ]
