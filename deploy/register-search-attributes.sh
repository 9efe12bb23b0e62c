#!/bin/sh
# One-shot (temporalio/admin-tools): register the saga's custom search attributes.
# Idempotent: an attribute already present is left alone, so a re-run of the stack is a no-op.
set -eu

ADDRESS="${TEMPORAL_ADDRESS:?TEMPORAL_ADDRESS is required}"
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
ATTRIBUTES="OrderStatus AccountId Symbol"

# The server's health check already waits for the namespace; this loop only covers a manual run.
tries=0
until temporal operator namespace describe --namespace "$NAMESPACE" --address "$ADDRESS" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "namespace $NAMESPACE not reachable at $ADDRESS" >&2
    exit 1
  fi
  sleep 2
done

existing="$(temporal operator search-attribute list --namespace "$NAMESPACE" --address "$ADDRESS")"
for name in $ATTRIBUTES; do
  if printf '%s\n' "$existing" | grep -qw "$name"; then
    echo "search attribute $name already registered"
  else
    temporal operator search-attribute create --namespace "$NAMESPACE" --address "$ADDRESS" \
      --name "$name" --type Keyword
    echo "registered search attribute $name (Keyword)"
  fi
done
