#!/usr/bin/env bash
# Makes the outside world of the acceptance-tests example in DIR, for the demo and the
# e2e tests: a release in a Maven layout (com/acme/app/1.4.2/app-1.4.2.war) and the
# acceptance tests as a git repository served over HTTP (qa/acceptance.git) with a
# `main` branch that passes, a `failing` branch that does not, and an `until-fixed` branch
# that passes once DIR/fixed exists.
#   make-world.sh DIR
set -euo pipefail
dir=${1:?usage: make-world.sh DIR}
mkdir -p "$dir/com/acme/app/1.4.2" "$dir/qa"
# A deterministic 256 KiB "war".
python3 -c 'import sys; sys.stdout.buffer.write(bytes((i * 31) % 251 for i in range(256 * 1024)))' \
  > "$dir/com/acme/app/1.4.2/app-1.4.2.war"

work="$dir/work-tests"
rm -rf "$work" "$dir/qa/acceptance.git"
mkdir -p "$work"
git -C "$work" init -q -b main
git -C "$work" config user.email qa@example.com
git -C "$work" config user.name QA
cat > "$work/run-tests.sh" <<'SH'
#!/bin/sh
# Acceptance tests: a stand-in for `mvn verify` (no Maven image can be pulled here).
set -u
url="$1"
echo "Running acceptance tests against $url"
curl -fsS -o /tmp/deployed.war "$url" || { echo "Tests run: 1, Failures: 1 (the app does not answer)"; exit 1; }
cmp -s /tmp/deployed.war app.war || { echo "Tests run: 2, Failures: 1 (the deployed war differs)"; exit 1; }
echo "Tests run: 2, Failures: 0"
SH
git -C "$work" add .
git -C "$work" commit -q -m "acceptance tests"
git -C "$work" checkout -q -b failing
sed -i 's/^echo "Tests run: 2, Failures: 0"$/echo "Tests run: 2, Failures: 1 (login page returns 500)"; exit 1/' "$work/run-tests.sh"
git -C "$work" commit -q -am "a failing test"
# `until-fixed`: fails until the environment is fixed, which the rerun test does by serving
# a file `fixed` beside the deploy endpoint (a flaky environment, not a broken release).
git -C "$work" checkout -q -b until-fixed main
sed -i 's|^echo "Tests run: 2, Failures: 0"$|curl -fsS -o /dev/null "${url%/deploy/*}/fixed" \|\| { echo "Tests run: 2, Failures: 1 (the environment is not fixed yet)"; exit 1; }\necho "Tests run: 2, Failures: 0"|' "$work/run-tests.sh"
git -C "$work" commit -q -am "tests that pass once the environment is fixed"
git -C "$work" checkout -q main
git clone -q --bare "$work" "$dir/qa/acceptance.git"
# git's "dumb" HTTP protocol needs these index files; any static file server then works.
git -C "$dir/qa/acceptance.git" update-server-info
