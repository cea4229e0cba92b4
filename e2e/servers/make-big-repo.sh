#!/usr/bin/env bash
# A git repository of real size for the warm-cache tests, served over git's "dumb" HTTP
# protocol like qa/acceptance.git: the sources of three crates from the local cargo
# registry cache (k8s-openapi, aws-sdk-ec2 and aws-lc-sys, ~210 MB in ~15,000 files;
# generated files when the cache lacks them) and a history of COMMITS commits on top, made
# with `git fast-import` (seconds, not minutes).
#
#   make-big-repo.sh DIR [COMMITS]   ->  DIR/big.git (bare, served) and DIR/big-work (a
#                                        clone that tests commit in and push from)
set -euo pipefail

dir=$1
commits=${2:-10000}
bare="$dir/big.git"
work="$dir/big-work"
rm -rf "$bare" "$work"
mkdir -p "$work"

git -C "$work" init -q -b main
git -C "$work" config user.email e2e@example.com
git -C "$work" config user.name "Maestro e2e"
found=0
for crate in k8s-openapi aws-sdk-ec2 aws-lc-sys; do
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$crate"-[0-9]* 2>/dev/null | head -n 1 || true)
  if [ -n "$src" ]; then
    cp -r "$src" "$work/$crate"
    rm -f "$work/$crate/.cargo_vcs_info.json" "$work/$crate/.cargo-ok"
    found=1
  fi
done
if [ "$found" -eq 0 ]; then
  mkdir -p "$work/generated"
  for i in $(seq 1 1000); do
    head -c 40000 /dev/urandom | base64 >"$work/generated/file-$i.txt"
  done
fi
git -C "$work" add -A
git -C "$work" commit -q -m "import the sources"

# The history: each commit changes one of 100 small files.
{
  for i in $(seq 1 "$commits"); do
    message="change $i"
    content="revision $i"
    echo "commit refs/heads/main"
    echo "committer Maestro e2e <e2e@example.com> $((1700000000 + i)) +0000"
    echo "data ${#message}"
    echo "$message"
    if [ "$i" -eq 1 ]; then
      echo "from refs/heads/main^0"
    fi
    echo "M 644 inline history/file-$((i % 100)).txt"
    echo "data ${#content}"
    echo "$content"
  done
} | git -C "$work" fast-import --quiet
git -C "$work" reset -q --hard main

git clone -q --bare "$work" "$bare"
# One pack: the dumb protocol then fetches a single file instead of walking objects.
git -C "$bare" repack -a -d -q
git -C "$bare" update-server-info
git -C "$work" remote add served "$bare"
