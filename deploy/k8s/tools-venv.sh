#!/usr/bin/env sh
# Makes .venv-tools (git-ignored) at the repository root with the pinned checkov, whose own
# dependency pins conflict with the project's, so it never goes into .venv. Idempotent:
# exits at once when the pinned version is there. tests/integration/test_deploy_k8s.py
# calls it in CI (CI=true); elsewhere run it by hand to enable the checkov test.
set -eu
cd "$(dirname "$0")/../.."
venv=.venv-tools
checkov_version=3.3.30
if [ -x "$venv/bin/checkov" ] && [ "$("$venv/bin/checkov" --version 2>/dev/null)" = "$checkov_version" ]; then
    exit 0
fi
python3 -m venv "$venv"
printf '*\n' > "$venv/.gitignore"
"$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$checkov_version"
"$venv/bin/checkov" --version
