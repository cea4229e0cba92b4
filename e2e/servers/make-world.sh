#!/usr/bin/env bash
# Makes the outside world of the acceptance-tests example in DIR, for the demo and the
# e2e tests: a release in a Maven layout (com/acme/app/1.4.2/app-1.4.2.war, a tiny real
# webapp built from e2e/servers/world/app with Maven) and the acceptance tests, a Maven
# project of JUnit 5 tests (e2e/servers/world/acceptance), as a git repository served over
# HTTP (qa/acceptance.git) with a `main` branch that passes, a `failing` branch whose
# loginPageAnswers test fails, and an `until-fixed` branch whose environmentIsFixed test
# passes once the Tomcat serves /fixed/ (the rerun test deploys it there).
#   make-world.sh DIR
#
# The war is built once with the host's Maven (Maven Central's downloads cached under
# $MAESTRO_CACHE/m2-v1) and cached by its sources under $MAESTRO_CACHE/world-v1.
set -euo pipefail
dir=${1:?usage: make-world.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
cache=${MAESTRO_CACHE:-$HOME/.cache/maestro}
mkdir -p "$dir/com/acme/app/1.4.2" "$dir/qa" "$cache/world-v1"

key=$(cd "$here/world/app" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
war="$cache/world-v1/app-1.4.2-$key.war"
if [ ! -f "$war" ]; then
  command -v mvn >/dev/null || { echo "make-world: mvn is missing: apt-get install -y maven" >&2; exit 1; }
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  cp -r "$here/world/app/." "$build/"
  echo "make-world: building the war with Maven (downloads cached in $cache/m2-v1)" >&2
  (cd "$build" && mvn -B -ntp -q -Dmaven.repo.local="$cache/m2-v1/repository" package) >&2
  cp "$build/target/app-1.4.2.war" "$war.tmp" && mv "$war.tmp" "$war"
fi
cp "$war" "$dir/com/acme/app/1.4.2/app-1.4.2.war"

work="$dir/work-tests"
rm -rf "$work" "$dir/qa/acceptance.git"
mkdir -p "$work"
cp -r "$here/world/acceptance/." "$work/"
git -C "$work" init -q -b main
git -C "$work" config user.email qa@example.com
git -C "$work" config user.name QA
git -C "$work" add .
git -C "$work" commit -q -m "acceptance tests"
tests="$work/src/test/java/com/acme/qa/AppTest.java"
# add_test FILE: appends the test method of FILE to AppTest (before its last brace).
add_test() {
  python3 - "$tests" "$1" <<'PY'
import sys
path, method = sys.argv[1], sys.argv[2]
text = open(path).read().rstrip()
assert text.endswith("}")
open(path, "w").write(text[:-1] + method + "}\n")
PY
}
git -C "$work" checkout -q -b failing
add_test '
    @Test
    void loginPageAnswers() throws Exception {
        assertEquals(200, get(app("/login")).statusCode());
    }
'
git -C "$work" commit -q -am "a failing test"
# `until-fixed`: fails until the environment is fixed, which the rerun test does by
# deploying an app at /fixed on the same Tomcat (a flaky environment, not a broken release).
git -C "$work" checkout -q -b until-fixed main
add_test '
    @Test
    void environmentIsFixed() throws Exception {
        assertEquals(200, get(app("").resolve("/fixed/")).statusCode());
    }
'
git -C "$work" commit -q -am "tests that pass once the environment is fixed"
git -C "$work" checkout -q main
git clone -q --bare "$work" "$dir/qa/acceptance.git"
# git's "dumb" HTTP protocol needs these index files; any static file server then works.
git -C "$dir/qa/acceptance.git" update-server-info
