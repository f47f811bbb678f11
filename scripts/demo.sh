#!/usr/bin/env bash
# The main job: two apache2 sandboxes with different content, started, each answering.
# Idempotent: reuses the sandboxes if they exist. `scripts/demo.sh --clean` deletes them.
set -euo pipefail
vss=/usr/local/bin/virt-sandbox-service
names=(demo-web1 demo-web2)

if [ "${1:-}" = "--clean" ]; then
  for n in "${names[@]}"; do $vss delete --force "$n" 2>/dev/null || true; done
  exit 0
fi

for n in "${names[@]}"; do
  if ! $vss inspect "$n" >/dev/null 2>&1; then
    $vss create -u apache2.service "$n"
  fi
  state=$($vss inspect --json "$n" | python3 -c 'import json,sys; print(json.load(sys.stdin)["paths"]["state"])')
  printf '<h1>Hello from %s</h1>\n' "$n" > "$state/var/www/html/index.html"
  if [ "$($vss inspect --json "$n" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')" != running ]; then
    $vss start --detach "$n"
  fi
done

for n in "${names[@]}"; do
  echo "== $n answers:"
  $vss execute "$n" -- curl -sS http://localhost/
done
echo
$vss list
echo
echo "Look around: virt-sandbox-service inspect demo-web1; virt-sandbox-service execute demo-web1 -- apachectl -S"
echo "Clean up:    make clean-demo"
