"""The real container test of the serve image (`make image-test`; not part of `make test`).

1. Make a Debian bookworm base (python3, python3-venv, ca-certificates) with mmdebstrap and
   import it into buildah's storage (kept between runs; --rebuild-base makes it again).
2. Build deploy/docker/Dockerfile.serve on that base with buildah (daemonless, vfs storage,
   chroot isolation), the same file that builds on the public python:3.11-slim default.
3. Make a `tiny` bundle with ONNX exports using this checkout's own environment, mount it
   read-only at /models and a fresh folder at /data, and run the image's own ENTRYPOINT with
   `buildah run --network host`.
4. From the host: /v2/health/live and /v2/health/ready, a real prediction on /v1/predict, the
   image's HEALTHCHECK command, no torch or transformers inside, a non-root user, and the
   prediction log written to the /data volume. Then SIGTERM: the server drains and exits 0.
5. Write the image size, build time and start-to-ready time to benchmarks/results/image.*;
   remove the container (and the image unless --keep-image).

Needs root (or a user namespace), buildah, mmdebstrap and network access to Debian's mirror
and PyPI (pip runs inside the build). Exit codes: 0 pass, 1 failure, 2 a tool is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

log = logging.getLogger("image-test")

BUILDAH = ("buildah", "--storage-driver", "vfs")
BASE_IMAGE = "localhost/clip-har-debian-base:bookworm"
SERVE_IMAGE = "localhost/clip-har-serve:image-test"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# the base image's environment (an imported rootfs has no config of its own)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
# an image over this much is a regression: the torch-free image is far below it
SIZE_BUDGET_MIB = 1024.0
READY_BUDGET_S = 60.0


class ImageTestError(Exception):
    """A step of the image test failed; the message says which and why."""


def run(
    args: Sequence[str], *, capture: bool = True, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell, stdin closed); raise ImageTestError with its output on failure."""
    log.debug("$ %s", " ".join(args))
    result = subprocess.run(
        list(args),
        stdin=subprocess.DEVNULL,
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "")[-3000:] if capture else ""
        raise ImageTestError(f"{' '.join(args[:4])} … exited {result.returncode}\n{detail}")
    return result


def buildah(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run([*BUILDAH, *args], **kwargs)


def image_exists(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False).returncode == 0


def make_base(work: Path, *, rebuild: bool) -> float | None:
    """Import a mmdebstrap rootfs as BASE_IMAGE; the seconds it took, None when cached."""
    if image_exists(BASE_IMAGE) and not rebuild:
        log.info("base image %s: cached (--rebuild-base makes it again)", BASE_IMAGE)
        return None
    started = time.monotonic()
    rootfs = work / "rootfs.tar"
    log.info("mmdebstrap: %s with %s", DEBIAN_SUITE, ", ".join(BASE_PACKAGES))
    run(
        [
            "mmdebstrap",
            "--variant=apt",
            f"--include={','.join(BASE_PACKAGES)}",
            "--format=tar",
            '--aptopt=Acquire::Languages "none"',
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            DEBIAN_SUITE,
            str(rootfs),
            DEBIAN_MIRROR,
        ],
        timeout=1800,
    )
    container = buildah("from", "scratch").stdout.strip()
    try:
        buildah("add", container, str(rootfs), "/", timeout=900)
        buildah(
            "config",
            "--env",
            f"PATH={BASE_PATH}",
            "--cmd",
            "/bin/bash",
            "--label",
            f"org.opencontainers.image.title=debian-{DEBIAN_SUITE}-python3 (mmdebstrap)",
            container,
        )
        buildah("commit", "--rm", container, BASE_IMAGE, timeout=900)
    except BaseException:
        buildah("rm", container, check=False)
        raise
    rootfs.unlink()
    return time.monotonic() - started


def host_ca_bundles() -> list[Path]:
    """Where this host keeps the CA certificates pip should trust, most specific first."""
    named = [os.environ.get(name) for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    return [Path(path) for path in named if path] + [Path("/etc/ssl/certs/ca-certificates.crt")]


def build_serve(revision: str) -> float:
    """Build Dockerfile.serve on BASE_IMAGE as SERVE_IMAGE; the seconds it took."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    log.info("building deploy/docker/Dockerfile.serve on %s (pip runs inside)", BASE_IMAGE)
    # pip inside the build trusts what this host trusts (e.g. a TLS-inspecting proxy's CA)
    ca_bundle = next((path for path in host_ca_bundles() if path.is_file()), None)
    secret = ["--secret", f"id=pip-ca,src={ca_bundle}"] if ca_bundle else []
    started = time.monotonic()
    buildah(
        "bud",
        *secret,
        "--isolation",
        "chroot",
        "--format",
        "docker",  # HEALTHCHECK is a Docker-format field (OCI drops it)
        "--pull=never",
        "--build-arg",
        f"BASE={BASE_IMAGE}",
        "--build-arg",
        f"REVISION={revision}",
        "--build-arg",
        f"CREATED={created}",
        "-f",
        str(ROOT / "deploy" / "docker" / "Dockerfile.serve"),
        "-t",
        SERVE_IMAGE,
        str(ROOT),
        capture=False,
        timeout=3600,
    )
    return time.monotonic() - started


def image_config(name: str) -> dict[str, Any]:
    """The image's Docker config (Entrypoint, Cmd, Healthcheck, User, Labels, Env)."""
    inspected = json.loads(buildah("inspect", "--type", "image", name).stdout)
    config: dict[str, Any] = inspected["Docker"]["config"]
    return config


def image_size_bytes(image: str) -> int:
    """The unpacked size of the image's root filesystem (every layer), measured with du."""
    with working_container(image) as container:
        mountpoint = buildah("mount", container).stdout.strip()
        try:
            return int(run(["du", "-sb", mountpoint], timeout=300).stdout.split()[0])
        finally:
            buildah("umount", container, check=False)


def make_bundle(work: Path) -> Path:
    """A tiny zero-shot bundle exported to onnx, onnx-int8 and text-onnx (host environment)."""
    cli = Path(sys.executable).with_name("clip-har")
    bundle = work / "bundle"
    log.info("making a tiny ONNX bundle in %s", bundle)
    run([str(cli), "bundle", "create", "--model", "tiny", "-o", str(bundle)], timeout=600)
    run(
        [str(cli), "export", str(bundle), "--formats", "onnx,onnx-int8,text-onnx"],
        timeout=900,
    )
    bundle.chmod(0o755)
    return bundle


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(url: str, data: bytes | None = None, content_type: str = "") -> dict[str, Any]:
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def photo_jpeg() -> bytes:
    """A smooth random colour photo (the same kind the test suite uses)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((120, 90), Image.Resampling.BICUBIC).save(buffer, "JPEG")
    return buffer.getvalue()


def multipart(field: str, filename: str, payload: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def wait_ready(base: str, server: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ImageTestError(
                f"the container exited ({server.returncode}) before it was ready:\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            return http_json(f"{base}/v2/health/ready")
        time.sleep(0.25)
    raise ImageTestError(
        f"not ready within {READY_TIMEOUT_S:.0f} s:\n"
        + log_path.read_text(errors="replace")[-3000:]
    )


def stop_container_process(group: int) -> None:
    """SIGTERM to the container's main process (`clip-har serve`), as `docker stop` sends it;
    the whole process group when it cannot be told apart from buildah's own processes."""
    targets = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pgrp = int(stat.read_text().rsplit(")", 1)[1].split()[2])
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        launcher = Path(argv[0].decode(errors="replace")).name.startswith("buildah")
        serving = b"serve" in argv and any(arg.endswith(b"clip-har") for arg in argv)
        if pgrp == group and serving and not launcher:
            targets.append(int(stat.parent.name))
    log.info("SIGTERM to %s", targets or f"process group {group}")
    with contextlib.suppress(ProcessLookupError):
        for pid in targets:
            os.kill(pid, signal.SIGTERM)
        if not targets:
            os.killpg(group, signal.SIGTERM)


@contextlib.contextmanager
def working_container(image: str) -> Iterator[str]:
    """A buildah working container of ``image``, removed on exit."""
    container = buildah("from", "--pull=never", image).stdout.strip()
    try:
        yield container
    finally:
        buildah("rm", container, check=False)


def run_in(
    container: str, command: Sequence[str], **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """A command in the container (its user, environment and working directory)."""
    return buildah(
        "run", "--isolation", "chroot", "--network", "host", container, "--", *command, **kwargs
    )


def exercise(container: str, config: dict[str, Any], bundle: Path, data: Path) -> dict[str, Any]:
    """Start the image's entrypoint, check it from the host, stop it; the facts measured."""
    from clip_har.models.bundle import open_bundle

    facts: dict[str, Any] = {}
    entrypoint = list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
    if entrypoint[:2] != ["clip-har", "serve"]:
        raise ImageTestError(f"the image's entrypoint is {entrypoint}, not clip-har serve")
    user = run_in(container, ["id", "-u"]).stdout.strip()
    if user == "0":
        raise ImageTestError("the image runs as root")
    facts["uid"] = int(user)
    no_torch = (
        "import importlib.util as u; "
        "found = [m for m in ('torch', 'transformers') if u.find_spec(m)]; "
        "assert not found, found"
    )
    run_in(container, ["python", "-c", no_torch])
    facts["venv_mib"] = int(run_in(container, ["du", "-sm", "/opt/venv"]).stdout.split()[0])

    port = free_port()
    buildah("config", "--env", f"CLIP_HAR_SERVE_PORT={port}", container)
    base = f"http://127.0.0.1:{port}"
    log_path = data.parent / "serve.log"
    log.info("running the image's entrypoint %s on port %d", entrypoint, port)
    with log_path.open("wb") as server_log:
        started = time.monotonic()
        server = subprocess.Popen(
            [
                *BUILDAH,
                *("run", "--isolation", "chroot", "--network", "host"),
                *("--volume", f"{bundle}:/models:ro", "--volume", f"{data}:/data:rw"),
                container,
                "--",
                *entrypoint,
            ],
            stdin=subprocess.DEVNULL,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            ready = wait_ready(base, server, log_path)
            facts["start_to_ready_s"] = round(time.monotonic() - started, 2)
            if ready.get("ready") is not True:
                raise ImageTestError(f"/v2/health/ready answered {ready}")
            http_json(f"{base}/v2/health/live")
            body, content_type = multipart("file", "photo.jpg", photo_jpeg())
            answer = http_json(f"{base}/v1/predict", body, content_type)
            classes = set(open_bundle(bundle).class_names)
            if answer.get("label") not in classes or not answer.get("top_k"):
                raise ImageTestError(f"/v1/predict answered {answer}")
            facts["prediction"] = answer["label"]
            facts["model_version"] = ready.get("version")
            healthcheck = list((config.get("Healthcheck") or {}).get("Test") or [])
            if healthcheck[:1] != ["CMD"]:
                raise ImageTestError(f"the image's HEALTHCHECK is {healthcheck}")
            run_in(container, healthcheck[1:])  # exits 0 against the live server
            if not (data / "clip-har-serving.db").is_file():
                raise ImageTestError("no prediction log in the /data volume")
        finally:
            stopping = time.monotonic()
            stop_container_process(server.pid)
            try:
                code = server.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
                raise ImageTestError(
                    f"the container did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM"
                ) from None
    facts["stop_s"] = round(time.monotonic() - stopping, 2)
    if code != 0:
        raise ImageTestError(
            f"the server exited {code} on SIGTERM:\n" + log_path.read_text(errors="replace")[-3000:]
        )
    return facts


def git_revision() -> str:
    result = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False)
    return result.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild-base", action="store_true", help="make the Debian base again")
    parser.add_argument("--keep-image", action="store_true", help="keep the built serve image")
    parser.add_argument("--no-results", action="store_true", help="do not write benchmarks/results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s image-test: %(message)s")
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        log.error("missing %s: apt-get install -y buildah mmdebstrap", ", ".join(missing))
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="clip-har-image-test-") as tmp:
            work = Path(tmp)
            work.chmod(0o755)
            base_s = make_base(work, rebuild=args.rebuild_base)
            build_s = build_serve(git_revision())
            try:
                config = image_config(SERVE_IMAGE)
                size = image_size_bytes(SERVE_IMAGE)
                base_size = image_size_bytes(BASE_IMAGE)
                bundle = make_bundle(work)
                data = work / "data"
                data.mkdir()
                os.chown(data, 10001, 10001)  # the image's user writes the prediction log
                with working_container(SERVE_IMAGE) as container:
                    facts = exercise(container, config, bundle, data)
            finally:
                if not args.keep_image:
                    buildah("rmi", SERVE_IMAGE, check=False)
    except (ImageTestError, subprocess.TimeoutExpired) as exc:
        log.error("FAILED: %s", exc)
        return 1
    size_mib = size / 2**20
    rows = [
        {
            "image": "clip-har-serve (Dockerfile.serve)",
            "base": f"Debian {DEBIAN_SUITE} + python3 (mmdebstrap)",
            "size_mib": round(size_mib, 1),
            "base_size_mib": round(base_size / 2**20, 1),
            "venv_mib": facts["venv_mib"],
            "torch_inside": False,
            "uid": facts["uid"],
            "build_s": round(build_s, 1),
            "base_build_s": None if base_s is None else round(base_s, 1),
            "start_to_ready_s": facts["start_to_ready_s"],
            "sigterm_to_exit_s": facts["stop_s"],
            "prediction": facts["prediction"],
        }
    ]
    log.info("PASSED: %s", json.dumps(rows[0]))
    if not args.no_results:
        from _results import write_results

        paths = write_results(
            "image",
            rows,
            ratios={
                "size_budget_over_size": round(SIZE_BUDGET_MIB / size_mib, 2),
                "ready_budget_over_ready": round(READY_BUDGET_S / facts["start_to_ready_s"], 2),
            },
            goals={"size_budget_over_size": 1.0, "ready_budget_over_ready": 1.0},
            notes=(
                "`make image-test` (deploy/docker/image_test.py): Dockerfile.serve built with "
                "buildah (vfs, chroot isolation) on a Debian base made by mmdebstrap, run with "
                "`buildah run --network host` on a tiny ONNX bundle mounted at /models. Size is "
                f"uncompressed (base included); budgets: {SIZE_BUDGET_MIB:.0f} MiB, ready in "
                f"{READY_BUDGET_S:.0f} s. build_s includes pip downloading from PyPI."
            ),
        )
        log.info("wrote %s and %s", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
