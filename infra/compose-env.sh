#!/usr/bin/env bash
# Secrets for `docker compose up`, printed as a .env file that compose reads by itself:
#   bash infra/compose-env.sh > .env && docker compose up --build
# DNC_VIEW_KEY (the view's keyed hash), DNC_AUTHORITY_KEY (the workers' lift-signing key, given
# to the workers only), the Kafka superuser's password and one password per principal
# (dnc-desktop, dnc-admin, dnc-consent, dnc-gateway, dnc-worker, dnc-sync). Keep .env private.
set -euo pipefail
secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
echo "DNC_VIEW_KEY=$(secret)"
echo "DNC_AUTHORITY_KEY=$(secret)"
echo "DNC_KAFKA_SUPERUSER_PASSWORD=$(secret)"
for role in DESKTOP ADMIN CONSENT GATEWAY WORKER SYNC; do
    echo "DNC_KAFKA_PASSWORD_${role}=$(secret)"
done
