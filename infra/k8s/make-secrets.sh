#!/usr/bin/env bash
# Create infra/k8s/secrets/*.env from the committed *.env.example templates, with a fresh random
# value wherever a template says CHANGE_ME. Existing .env files are left alone (delete one to
# regenerate it). Review the result before `kubectl apply -k infra/k8s`: for AWS S3 or a managed
# MLflow, edit the URIs and keys. The .env files are git-ignored; never commit them.
#
#   infra/k8s/make-secrets.sh [SECRETS_DIR]
set -euo pipefail

DIR=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets}
[ -d "$DIR" ] || { echo "make-secrets: error: no directory $DIR" >&2; exit 1; }
command -v python3 >/dev/null || { echo "make-secrets: error: python3 is needed for random values" >&2; exit 1; }

umask 077
shopt -s nullglob
templates=("$DIR"/*.env.example)
[ ${#templates[@]} -gt 0 ] || { echo "make-secrets: error: no *.env.example in $DIR" >&2; exit 1; }
for template in "${templates[@]}"; do
  target=${template%.example}
  if [ -e "$target" ]; then
    echo "kept     $target (exists)"
    continue
  fi
  # hex: URL-safe, so a password can sit inside a database URI unescaped
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line == *=CHANGE_ME ]]; then
      printf '%s=%s\n' "${line%%=*}" "$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
    else
      printf '%s\n' "$line"
    fi
  done < "$template" > "$target"
  echo "created  $target"
done
