#!/usr/bin/env bash
# Every bench script in turn (`make bench`), then bench/results/README.md from their figures.
# Each script cleans up what it started, by PID, even when it fails; a failing script does not
# stop the others, but makes this exit non-zero. RUNS=N sets the runs per figure (default 5).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
py=${VSS_VENV:-$here/.venv}/bin/python
runs=${RUNS:-5}
# The issue-7 figures first, in this order; then any other bench script (every bench/*.py
# takes --runs N and writes its own bench/results/*.md).
scripts=(create create_busy lxc_service oneshot density load)
for f in bench/*.py; do
  s=$(basename "$f" .py)
  case " ${scripts[*]} _common summarize " in *" $s "*) ;; *) scripts+=("$s") ;; esac
done
failed=()
for script in "${scripts[@]}"; do
  n=$runs
  # density's --runs is how many instances of each kind run at once: issue 16 asks for 100.
  [ "$script" = density ] && n=${DENSITY:-100}
  echo "== bench/$script.py --runs $n"
  if ! "$py" "bench/$script.py" --runs "$n"; then
    failed+=("$script")
  fi
done
"$py" bench/summarize.py
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench: failed: ${failed[*]}" >&2
  exit 1
fi
