# Pinned versions of the benchmark's peers. Sourced by the bench scripts.
KWOK_VERSION=0.8.0            # sigs.k8s.io/kwok/cmd/kwok (go install), fake nodes
MAESTRO_CACHE="${MAESTRO_CACHE:-$HOME/.cache/maestro}"
KWOK_BIN="$MAESTRO_CACHE/kwok-v$KWOK_VERSION/kwok"
