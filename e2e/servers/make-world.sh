#!/usr/bin/env bash
# Makes the outside world of the acceptance-tests example in DIR, for the demo and the
# e2e tests: a release in a Maven layout (com/acme/app/1.4.2/app-1.4.2.war, a tiny real
# webapp built from e2e/servers/world/app with Maven) and the acceptance tests, a Maven
# project of JUnit 5 tests (e2e/servers/world/acceptance), as a git repository served over
# HTTP (qa/acceptance.git) with a `main` branch that passes, a `failing` branch whose
# loginPageAnswers test fails, and an `until-fixed` branch whose environmentIsFixed test
# passes once the Tomcat serves /fixed/ (the rerun test deploys it there), and a
# `with-settings` branch that needs the release from a repository only a settings.xml names.
#   make-world.sh DIR
#
# The war is built once with Maven in the Maven image (localhost/maestro/maven:dev, the
# image of the library's maven task, so no Maven on the host), as a Pod on the cluster,
# and cached by its sources under $MAESTRO_CACHE/world-v1: a warm run starts no Pod.
set -euo pipefail
dir=${1:?usage: make-world.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
cache=${MAESTRO_CACHE:-$HOME/.cache/maestro}
mkdir -p "$dir/com/acme/app/1.4.2" "$dir/qa" "$cache/world-v1"

key=$(cd "$here/world/app" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
war="$cache/world-v1/app-1.4.2-$key.war"

# build_war: builds e2e/servers/world/app into $war with `mvn package` in a Pod from the
# Maven image. Why a Pod and not the image's rootfs on the host: the Pod is the way every
# Maven run of the project goes (the cluster's network, DNS and trust store, the image's
# user), it needs nothing beyond the cluster the tests use anyway, and it runs under the
# restricted Pod Security Standard like a step pod. The sources go in as a ConfigMap (a
# tar: keys cannot hold paths); Maven's downloads stay on this machine under
# $cache/m2-v1/world through a PersistentVolume of that hostPath (a claim is allowed under
# restricted, a hostPath volume is not), owned by the image's user; the war comes back as
# base64 between two markers of the Pod's log (it is a few KB).
build_war() {
  # The local cluster's env file gives kubectl and, unless the caller chose a cluster, its
  # kubeconfig (the tests and the demo have both already).
  # shellcheck disable=SC1091
  . "$here/../cluster/versions.sh"
  local chosen=${KUBECONFIG:-}
  if [ -f "$CLUSTER_DIR/env" ] && { [ -z "$chosen" ] || ! command -v kubectl >/dev/null; }; then
    # shellcheck disable=SC1091
    . "$CLUSTER_DIR/env"
    [ -n "$chosen" ] && export KUBECONFIG="$chosen"
  fi
  PATH="$TOOLS_BIN:$PATH"
  command -v kubectl >/dev/null || { echo "make-world: kubectl is missing (make cluster-up)" >&2; exit 1; }
  local ns=maestro-world name="build-app-$key" image=${MAESTRO_MAVEN_IMAGE:-localhost/maestro/maven:dev}
  local m2="$cache/m2-v1/world" src
  install -d -o 65532 -g 65532 "$m2"
  src=$(mktemp)
  tar -C "$here/world" -cf "$src" app
  echo "make-world: building the war with Maven in $image (a Pod in namespace $ns; downloads cached in $m2)" >&2
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
  # A PV that outlived its claim (Released) binds no new claim: start from fresh objects.
  # Reclaim policy Retain: deleting them never touches the cached repository.
  kubectl -n "$ns" delete pod,configmap,pvc -l maestro.dev/world-build --ignore-not-found --wait >/dev/null
  kubectl delete pv -l maestro.dev/world-build --ignore-not-found --wait >/dev/null
  kubectl -n "$ns" create configmap "$name" --from-file=app.tar="$src" >/dev/null
  kubectl -n "$ns" label configmap "$name" maestro.dev/world-build=1 >/dev/null
  rm -f "$src"
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: maestro-world-m2, labels: {maestro.dev/world-build: "1"}}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: $ns, name: m2}
  hostPath: {path: $m2, type: Directory}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: m2, namespace: $ns, labels: {maestro.dev/world-build: "1"}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: maestro-world-m2
  resources: {requests: {storage: 2Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: $ns, labels: {maestro.dev/world-build: "1"}}
spec:
  restartPolicy: Never
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: mvn
      image: $image
      imagePullPolicy: IfNotPresent
      env: [{name: MAVEN_OPTS, value: -Xmx512m}]
      command: [sh, -c]
      args:
        - >-
          tar -xf /src/app.tar -C /build &&
          cd /build/app &&
          mvn -B -ntp -q -Dstyle.color=never -Dmaven.repo.local=/m2/repository package &&
          echo ---war-base64--- && base64 -w0 target/app-1.4.2.war && echo && echo ---end---
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: src, mountPath: /src, readOnly: true}
        - {name: build, mountPath: /build}
        - {name: m2, mountPath: /m2}
  volumes:
    - {name: src, configMap: {name: $name}}
    - {name: build, emptyDir: {}}
    - {name: m2, persistentVolumeClaim: {claimName: m2}}
YAML
  local phase="" waiting="" i
  for i in $(seq 1 600); do
    phase=$(kubectl -n "$ns" get pod "$name" -o jsonpath='{.status.phase}')
    case "$phase" in Succeeded|Failed) break ;; esac
    waiting=$(kubectl -n "$ns" get pod "$name" -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}')
    case "$waiting" in
      ErrImageNeverPull|ErrImagePull|ImagePullBackOff|InvalidImageName)
        echo "make-world: the Pod cannot start $image ($waiting): build the images first (bash e2e/images/build-images.sh)" >&2
        phase=NoImage; break ;;
    esac
    sleep 1
  done
  local log
  log=$(kubectl -n "$ns" logs "$name" 2>&1 || true)
  if [ "$phase" != Succeeded ]; then
    [ "$phase" = NoImage ] || printf '%s\n' "$log" | tail -n 40 >&2
    echo "make-world: building the war failed (Pod $ns/$name: ${phase:-no phase after 600 s})" >&2
    exit 1
  fi
  printf '%s\n' "$log" | sed -n '/---war-base64---$/,/^---end---/p' | sed '1d;$d' | base64 -d >"$war.tmp"
  [ -s "$war.tmp" ] || { echo "make-world: the Pod's log holds no war" >&2; exit 1; }
  mv "$war.tmp" "$war"
  kubectl -n "$ns" delete pod,configmap,pvc -l maestro.dev/world-build --ignore-not-found --wait=false >/dev/null
  kubectl delete pv -l maestro.dev/world-build --ignore-not-found --wait=false >/dev/null
}

if [ ! -f "$war" ]; then
  # The tests make their worlds two at a time: one build, the others wait for its war.
  exec 8>"$cache/world-v1/.lock"
  flock 8
  [ -f "$war" ] || build_war
  flock -u 8
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
# `with-settings`: the tests also depend on the release itself (com.acme:app:war, test
# scope), which only the world's repository holds, declared in no POM: the build resolves
# it only with a settings.xml that names that repository (the settings e2e test).
git -C "$work" checkout -q -b with-settings main
python3 - "$work/pom.xml" <<'PY2'
import sys
path = sys.argv[1]
text = open(path).read()
anchor = "  <dependencies>\n"
assert anchor in text
release = """    <dependency>
      <groupId>com.acme</groupId>
      <artifactId>app</artifactId>
      <version>1.4.2</version>
      <type>war</type>
      <scope>test</scope>
    </dependency>
"""
open(path, "w").write(text.replace(anchor, anchor + release, 1))
PY2
git -C "$work" commit -q -am "tests that need the release from the company's repository"
git -C "$work" checkout -q main
git clone -q --bare "$work" "$dir/qa/acceptance.git"
# git's "dumb" HTTP protocol needs these index files; any static file server then works.
git -C "$dir/qa/acceptance.git" update-server-info
