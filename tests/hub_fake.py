"""A local fake of the Hugging Face Hub HTTP API: the one fake the design allows.

It implements just the endpoints ``huggingface_hub`` (2.x) calls for ``create_repo``,
``create_branch``, ``upload_folder`` (``preupload`` answering the "regular" upload mode for
every file, then the NDJSON ``commit`` with base64 file contents) and ``snapshot_download``
(model info with ``siblings`` and ``sha``, the recursive ``tree`` listing, and
``resolve/{revision}/{file}`` with the headers ``huggingface_hub`` checks: ``X-Repo-Commit``,
``ETag``, ``Content-Length``). Repositories live in memory, one commit per upload. Write
endpoints require an ``Authorization`` header, as the Hub does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_NAMESPACE = "fake-user"  # the namespace of a repo created without one


def git_blob_id(content: bytes) -> str:
    """The git object id of a file's content: what the Hub reports as a regular file's oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


@dataclass
class Repo:
    """One model repository: commits (sha -> files) and branches (name -> sha)."""

    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """The commit sha a branch name or a sha names."""
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


@dataclass
class FakeHub:
    """The state of the fake, readable by tests (``repos``, ``tokens`` seen)."""

    url: str = ""
    repos: dict[str, Repo] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, repo_id: str, private: bool) -> bool:
        """Create an empty repo with an initial commit; False when it exists."""
        with self.lock:
            if repo_id in self.repos:
                return False
            repo = Repo(private=private)
            sha = hashlib.sha1(f"init {repo_id}".encode(), usedforsecurity=False).hexdigest()
            repo.commits[sha] = {".gitattributes": b"*.safetensors filter=lfs diff=lfs\n"}
            repo.branches["main"] = sha
            self.repos[repo_id] = repo
            return True

    def commit(self, repo_id: str, branch: str, lines: list[dict[str, Any]]) -> str:
        """Apply the NDJSON operations on ``branch``; returns the new commit sha."""
        with self.lock:
            repo = self.repos[repo_id]
            files = dict(repo.commits[repo.branches[branch]])
            digest = hashlib.sha1(repo.branches[branch].encode(), usedforsecurity=False)
            for line in lines:
                value = line.get("value", {})
                if line.get("key") == "file":
                    content = base64.b64decode(value["content"])
                    files[value["path"]] = content
                    digest.update(value["path"].encode() + content)
                elif line.get("key") == "deletedFile":
                    files.pop(value["path"], None)
                elif line.get("key") == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {k: v for k, v in files.items() if not k.startswith(prefix)}
                elif line.get("key") != "header":
                    raise ValueError(f"the fake Hub does not take '{line.get('key')}' operations")
            sha = digest.hexdigest()
            repo.commits[sha] = files
            repo.branches[branch] = sha
            return sha


_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<branch>.+)$"), "create_branch"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>.+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>.+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/revision/(?P<rev>[^/]+)$"), "model_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}$"), "model_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?$"), "tree"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub  # set on the subclass ``serve`` makes

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # ------------------------------------------------------------------ plumbing

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(path)
            if route_method == method and match:
                getattr(self, f"_{name}")(body=body, **match.groupdict())
                return
        self._reply(404, {"error": f"the fake Hub has no {method} {path}"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _reply(
        self,
        status: int,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        error_code: str | None = None,
    ) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        if error_code is not None:
            self.send_header("X-Error-Code", error_code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            self._reply(401, {"error": "Invalid credentials in Authorization header"})
            return False
        with self.hub.lock:
            self.hub.tokens.append(auth.removeprefix("Bearer "))
        return True

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._reply(404, {"error": "Repository not found"}, error_code="RepoNotFound")
        return repo

    def _commit_of(self, repo: Repo, rev: str) -> str | None:
        sha = repo.resolve(rev)
        if sha is None:
            self._reply(404, {"error": "Invalid rev id"}, error_code="RevisionNotFound")
        return sha

    # ------------------------------------------------------------------ endpoints

    def _create_repo(self, body: bytes) -> None:
        if not self._authorised():
            return
        request = json.loads(body)
        repo_id = f"{request.get('organization') or DEFAULT_NAMESPACE}/{request['name']}"
        private = request.get("visibility") == "private" or bool(request.get("private"))
        url = f"{self.hub.url}/{repo_id}"
        if not self.hub.create(repo_id, private):
            # the Hub names the existing repo's url; create_repo(exist_ok=True) reads it
            self._reply(409, {"error": "You already created this model repo", "url": url})
            return
        self._reply(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, body: bytes) -> None:
        self._reply(200, {"errors": [], "warnings": []})

    def _create_branch(self, body: bytes, repo: str, branch: str) -> None:
        if not self._authorised() or (found := self._repo(repo)) is None:
            return
        with self.hub.lock:
            name = unquote(branch)
            if name in found.branches:
                self._reply(409, {"error": "Reference already exists"})
                return
            found.branches[name] = found.branches["main"]
        self._reply(200, {})

    def _preupload(self, body: bytes, repo: str, rev: str) -> None:
        if not self._authorised() or (found := self._repo(repo)) is None:
            return
        if (sha := self._commit_of(found, rev)) is None:
            return
        files = found.commits[sha]
        answer = [
            {
                "path": item["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_id(files[item["path"]]) if item["path"] in files else None,
            }
            for item in json.loads(body)["files"]
        ]
        self._reply(200, {"files": answer})

    def _commit(self, body: bytes, repo: str, rev: str) -> None:
        if not self._authorised() or (found := self._repo(repo)) is None:
            return
        branch = unquote(rev)
        if branch not in found.branches:
            self._reply(404, {"error": "Invalid rev id"}, error_code="RevisionNotFound")
            return
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        sha = self.hub.commit(repo, branch, lines)
        self._reply(
            200,
            {"success": True, "commitOid": sha, "commitUrl": f"{self.hub.url}/{repo}/commit/{sha}"},
        )

    def _model_info(self, body: bytes, repo: str, rev: str = "main") -> None:
        if (found := self._repo(repo)) is None or (sha := self._commit_of(found, rev)) is None:
            return
        files = found.commits[sha]
        self._reply(
            200,
            {
                "id": repo,
                "modelId": repo,
                "sha": sha,
                "private": found.private,
                "siblings": [{"rfilename": name} for name in sorted(files)],
            },
        )

    def _tree(self, body: bytes, repo: str, rev: str, path: str | None = None) -> None:
        if (found := self._repo(repo)) is None or (sha := self._commit_of(found, rev)) is None:
            return
        prefix = unquote(path or "").strip("/")
        files = found.commits[sha]
        folders = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
        entries: list[dict[str, Any]] = [
            {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()}
            for folder in folders
            if folder.startswith(prefix)
        ]
        entries += [
            {"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
            for name, data in sorted(files.items())
            if name.startswith(prefix)
        ]
        self._reply(200, entries)

    def _resolve(self, body: bytes, repo: str, rev: str, path: str) -> None:
        if (found := self._repo(repo)) is None or (sha := self._commit_of(found, rev)) is None:
            return
        data = found.commits[sha].get(unquote(path))
        if data is None:
            self._reply(404, {"error": "Entry not found"}, error_code="EntryNotFound")
            return
        self._reply(
            200,
            raw=data,
            headers={"X-Repo-Commit": sha, "ETag": f'"{git_blob_id(data)}"'},
        )


@contextmanager
def serve() -> Iterator[FakeHub]:
    """Run the fake Hub on a free port of 127.0.0.1 (the system picks it) in a thread for
    the block; its ``url`` is the endpoint to give ``HF_ENDPOINT``."""
    hub = FakeHub()
    handler = type("FakeHubHandler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
