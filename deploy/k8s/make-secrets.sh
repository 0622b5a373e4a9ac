#!/bin/sh
# Creates the files an overlay's secretGenerator reads, in OVERLAY/secrets/
# (git-ignored; never commit them). Existing files are kept, so re-running is
# harmless; to rotate one, delete its file, re-run and apply (the Secret's
# name hash changes, so the pods that use it roll).
#
#   deploy/k8s/make-secrets.sh deploy/k8s/overlays/dev
#   CHAT_DATABASE_URL='postgresql://chat:...@db.internal:5432/chat' \
#     CHAT_NOTIFY_WEBHOOK_URL='https://hooks.example.com/chat' \
#     deploy/k8s/make-secrets.sh deploy/k8s/overlays/production
#
# Files (deploy/README.md "Secrets"):
#   nats-<role>            a random NATS password per role (gateway auth history
#                          presence notify server admin) -> Secret chat-nats-credentials
#   signing-key.pem        auth's Ed25519 key (openssl genpkey) -> chat-auth-signing-key
#   database-url           $CHAT_DATABASE_URL; the dev overlay's default is its own
#                          PostgreSQL with postgres-password -> chat-database
#   postgres-password      the dev overlay's PostgreSQL password -> chat-postgres
#   notify-webhook-url     $CHAT_NOTIFY_WEBHOOK_URL, empty = notifications off
#   notify-webhook-secret  the webhook's HMAC key -> chat-notify-webhook
# A secret manager can write the same files instead (or replace the
# secretGenerator with its own operator's objects of the same names).
set -eu

overlay=${1:?usage: make-secrets.sh OVERLAY_DIR}
dir="$overlay/secrets"
umask 077
mkdir -p "$dir"

random() { openssl rand -base64 32 | tr -d '/+=\n'; }

for role in gateway auth history presence notify server admin; do
  [ -s "$dir/nats-$role" ] || random > "$dir/nats-$role"
done
[ -s "$dir/signing-key.pem" ] || openssl genpkey -algorithm ed25519 -out "$dir/signing-key.pem"
[ -s "$dir/postgres-password" ] || random > "$dir/postgres-password"
if [ ! -s "$dir/database-url" ]; then
  if [ -n "${CHAT_DATABASE_URL:-}" ]; then
    printf '%s' "$CHAT_DATABASE_URL" > "$dir/database-url"
  elif [ "$(basename "$overlay")" = dev ]; then
    printf 'postgresql://chat:%s@chat-postgres:5432/chat' "$(cat "$dir/postgres-password")" \
      > "$dir/database-url"
  else
    echo "make-secrets.sh: set CHAT_DATABASE_URL (the production database)" >&2
    exit 2
  fi
fi
[ -e "$dir/notify-webhook-url" ] || printf '%s' "${CHAT_NOTIFY_WEBHOOK_URL:-}" > "$dir/notify-webhook-url"
[ -s "$dir/notify-webhook-secret" ] || openssl rand -hex 32 | tr -d '\n' > "$dir/notify-webhook-secret"
echo "secrets in $dir"
