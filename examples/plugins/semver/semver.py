#!/usr/bin/env python3
"""semver-bump: a Maestro plugin task in Python (standard library only).

Bumps a semantic version. The contract is the one of every plugin (agent-image/README.md):
inputs come as MAESTRO_INPUT_<NAME> environment variables, each output is written as a
file named after it in the directory $MAESTRO_OUTPUTS, stdout and stderr go to the step's
log, and the exit code decides the step: 0 succeeded, 2 bad input (nothing was done), 1
any other failure.

Inputs:  version  required, MAJOR.MINOR.PATCH like 1.4.2 (a leading "v", a pre-release
                  and build metadata are accepted: v1.5.0-rc.1+build.7)
         part     major, minor or patch (default patch)
Outputs: next     the bumped version, like 1.4.3
         tag      the same with a "v" prefix, like v1.4.3

A pre-release is bumped to its release, as npm's semver does: a patch bump of 1.4.3-rc.1
is 1.4.3, a minor bump of 1.5.0-rc.1 is 1.5.0. Build metadata is dropped.

Run it outside a cluster:
  MAESTRO_INPUT_VERSION=1.4.2 MAESTRO_INPUT_PART=minor MAESTRO_OUTPUTS=/tmp/out python3 semver.py

The image installs python3-minimal, whose standard library is only the core (no json, for
one): keep the imports to os, re and sys.
"""

import os
import re
import sys

NAME = "semver-bump"
# semver.org 2.0.0: numbers without leading zeros, then an optional -pre-release and
# +build metadata (dot-separated alphanumerics and hyphens).
SEMVER = re.compile(
    r"v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
PARTS = ("major", "minor", "patch")


class BadInput(Exception):
    """An input the plugin refuses; the message names the input."""


def quoted(value):
    """A value for a message: in double quotes like the agent's, cut if long."""
    return '"' + (value if len(value) <= 64 else value[:64] + "...") + '"'


def bump(version, part):
    """Returns the version after `version` when `part` is bumped."""
    m = SEMVER.fullmatch(version)
    if m is None:
        raise BadInput(f'input "version": {quoted(version)} is not a semantic version (MAJOR.MINOR.PATCH, like 1.4.2)')
    if part not in PARTS:
        raise BadInput(f'input "part" must be major, minor or patch, not {quoted(part)}')
    major, minor, patch = (int(g) for g in m.group(1, 2, 3))
    pre = m.group(4) is not None
    if part == "major":
        # 2.0.0-rc.1 -> 2.0.0: the pre-release of a major version becomes that version.
        if not (pre and minor == 0 and patch == 0):
            major += 1
        minor = patch = 0
    elif part == "minor":
        if not (pre and patch == 0):
            minor += 1
        patch = 0
    elif not pre:
        patch += 1
    return f"{major}.{minor}.{patch}"


def main():
    version = os.environ.get("MAESTRO_INPUT_VERSION", "").strip()
    # The operator passes the Task's default (patch); an empty value means the same.
    part = os.environ.get("MAESTRO_INPUT_PART", "").strip() or "patch"
    outputs = os.environ.get("MAESTRO_OUTPUTS", "/maestro/outputs")
    try:
        if not version:
            raise BadInput('input "version" is required (like 1.4.2)')
        after = bump(version, part)
    except BadInput as e:
        print(f"{NAME}: {e}", file=sys.stderr)
        return 2
    print(f"{NAME}: {version} -> {after} ({part} bump)")
    try:
        for name, value in (("next", after), ("tag", "v" + after)):
            with open(os.path.join(outputs, name), "w", encoding="utf-8") as f:
                f.write(value + "\n")  # the agent trims one trailing newline
    except OSError as e:
        print(f"{NAME}: cannot write the outputs to {outputs}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
