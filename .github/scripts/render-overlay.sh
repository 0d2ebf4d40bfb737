#!/usr/bin/env bash
# Print a kustomize overlay of deploy/k8s with the images of one build (deploy.yml):
#
#   .github/scripts/render-overlay.sh OVERLAY TAG [OWNER]
#
# OVERLAY is dev or prod; TAG an image tag of build.yml (sha-<commit>, 1.2.3); OWNER the
# GHCR namespace (default clip-har): the base's ghcr.io/clip-har/clip-har-{serve,ui,train}
# become ghcr.io/OWNER/clip-har-*:TAG. Needs kubectl (its built-in kustomize).
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 OVERLAY TAG [OWNER]" >&2
    exit 2
fi
overlay=$1 tag=$2 owner=${3:-clip-har}
owner=${owner,,}  # GHCR names are lower case
overlays=$(cd "$(dirname "$0")/../../deploy/k8s/overlays" && pwd)
if [[ ! -f "$overlays/$overlay/kustomization.yaml" ]]; then
    echo "no overlay named '$overlay' in $overlays" >&2
    exit 2
fi
if [[ ! $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
    echo "'$tag' is not a valid image tag" >&2
    exit 2
fi

# a throwaway overlay on top of the chosen one, beside it (kustomize loads bases by
# relative path), removed on exit
work=$(mktemp -d "$overlays/.render-XXXXXX")
trap 'rm -rf "$work"' EXIT
{
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources:"
    echo "  - ../$overlay"
    echo "images:"
    for image in serve ui train; do
        echo "  - name: ghcr.io/clip-har/clip-har-$image"
        echo "    newName: ghcr.io/$owner/clip-har-$image"
        echo "    newTag: \"$tag\""
    done
} > "$work/kustomization.yaml"
kubectl kustomize "$work"
