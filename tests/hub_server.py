"""A tiny Hub-compatible HTTP server for offline tests (127.0.0.1, a thread, state in memory).

It implements only what ``huggingface_hub`` 2.4 calls for ``create_repo``, ``update_repo_settings``,
``upload_folder`` (validate-yaml, preupload, commit), ``repo_info``/``model_info``, ``list_repo_tree``,
``hf_hub_download``/``snapshot_download`` (HEAD and GET on ``/resolve/``). Every file is answered ``regular`` by the
preupload endpoint, so the client sends its bytes base64-encoded inside the commit: no LFS, no Xet. Writes need a
bearer token; reads of private or gated repositories need one too. Each request is recorded in ``requests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

TOKEN = "hf_test_token"  # any bearer token is accepted; the tests send this one

REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (method, pattern, handler name)
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),  # the client's best-effort user-agent registry
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("PUT", rf"/api/models/{REPO}/settings", "settings"),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", "info"),
    ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


def git_blob_id(content: bytes) -> str:
    """The git blob sha1 the Hub reports as a regular file's ETag / oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    private: bool = False
    gated: str | bool = False
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # (sha, files), oldest first

    def snapshot(self, revision: str | None) -> tuple[str, dict[str, bytes]] | None:
        if not self.commits:
            return None
        if revision in (None, "main"):
            return self.commits[-1]
        return next((c for c in self.commits if c[0] == revision), None)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, **headers: str) -> Reply:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **headers})

    @classmethod
    def error(cls, status: int, code: str, message: str) -> Reply:
        return cls.json({"error": message}, status, **{"X-Error-Code": code, "X-Error-Message": message})


class FakeHub:
    """The server's state and endpoint logic (HTTP plumbing lives in the request handler)."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.unhandled: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.url = ""

    # -------------------------------------------------------------------------------------------- dispatch
    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> Reply:
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self.lock:
            self.requests.append((method, split.path))
            for route_method, pattern, name in ROUTES:
                match = re.fullmatch(pattern, split.path)
                if route_method == method and match:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    return getattr(self, name)(headers=headers, body=body, query=query, **params)
            self.unhandled.append((method, split.path))
            return Reply.error(404, "NotImplemented", f"{method} {split.path} is not served by the fake hub")

    @staticmethod
    def _token(headers: Any) -> str | None:
        value = headers.get("Authorization") or ""
        return value.removeprefix("Bearer ").strip() or None

    def _readable(self, repo_id: str, headers: Any) -> FakeRepo | Reply:
        repo = self.repos.get(repo_id)
        if repo is None:
            return Reply.error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if (repo.private or repo.gated) and self._token(headers) is None:
            code = "GatedRepo" if repo.gated else "RepoNotFound"
            return Reply.error(401, code, f"Access to {repo_id} is restricted: authenticate first")
        return repo

    def _writable(self, repo_id: str, headers: Any) -> FakeRepo | Reply:
        if self._token(headers) is None:
            return Reply.error(401, "Unauthorized", "Invalid credentials in Authorization header")
        repo = self.repos.get(repo_id)
        return repo if repo is not None else Reply.error(404, "RepoNotFound", f"Repository {repo_id} not found")

    # ------------------------------------------------------------------------------------------- endpoints
    def agent_harnesses(self, headers, body, query) -> Reply:
        """Not served on purpose: the client ignores the error and writes no registry cache under HF_HOME."""
        return Reply.error(404, "NotFound", "no agent registry on the fake hub")

    def create_repo(self, headers, body, query) -> Reply:
        if self._token(headers) is None:
            return Reply.error(401, "Unauthorized", "Invalid credentials in Authorization header")
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return Reply.json({"error": "You already created this model repo", "url": url}, 409)
        self.repos[repo_id] = FakeRepo(repo_id, private=payload.get("visibility") == "private")
        return Reply.json({"url": url, "name": repo_id})

    def validate_yaml(self, headers, body, query) -> Reply:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            if match is None or not isinstance(yaml.safe_load(match.group(1)), dict):
                raise ValueError("no YAML front matter")
        except Exception as error:  # malformed YAML: the Hub answers 400
            return Reply.json({"errors": [{"message": str(error)}]}, 400)
        return Reply.json({"warnings": []})

    def settings(self, headers, body, query, repo) -> Reply:
        found = self._writable(repo, headers)
        if isinstance(found, Reply):
            return found
        payload = json.loads(body)
        if "gated" in payload:
            found.gated = payload["gated"]
        if "visibility" in payload:
            found.private = payload["visibility"] == "private"
        return Reply.json({})

    def preupload(self, headers, body, query, repo, rev) -> Reply:
        found = self._writable(repo, headers)
        if isinstance(found, Reply):
            return found
        files = json.loads(body)["files"]
        return Reply.json(
            {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]}
        )

    def commit(self, headers, body, query, repo, rev) -> Reply:
        found = self._writable(repo, headers)
        if isinstance(found, Reply):
            return found
        parent = found.snapshot(rev)
        files = dict(parent[1]) if parent else {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            elif key != "header":
                return Reply.json({"error": f"operation {key!r} is not supported (no LFS/Xet here)"}, 400)
        sha = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        found.commits.append((sha, files))
        return Reply.json({"commitUrl": f"{self.url}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    def info(self, headers, body, query, repo, rev=None) -> Reply:
        found = self._readable(repo, headers)
        if isinstance(found, Reply):
            return found
        snapshot = found.snapshot(rev)
        if snapshot is None and rev not in (None, "main"):
            return Reply.error(404, "RevisionNotFound", f"Revision {rev} not found")
        sha, files = snapshot or ("0" * 40, {})
        return Reply.json(
            {
                "id": repo,
                "modelId": repo,
                "sha": sha,
                "private": found.private,
                "gated": found.gated,
                "siblings": [{"rfilename": path} for path in sorted(files)],
            }
        )

    def tree(self, headers, body, query, repo, rev, path="") -> Reply:
        found = self._readable(repo, headers)
        if isinstance(found, Reply):
            return found
        snapshot = found.snapshot(rev)
        if snapshot is None:
            return Reply.error(404, "RevisionNotFound", f"Revision {rev} not found")
        prefix = f"{path.rstrip('/')}/" if path else ""
        entries = [
            {"type": "file", "path": p, "size": len(c), "oid": git_blob_id(c)}
            for p, c in sorted(snapshot[1].items())
            if p.startswith(prefix)
        ]
        return Reply.json(entries)

    def resolve(self, headers, body, query, repo, rev, path) -> Reply:
        found = self._readable(repo, headers)
        if isinstance(found, Reply):
            return found
        snapshot = found.snapshot(rev)
        if snapshot is None:
            return Reply.error(404, "RevisionNotFound", f"Revision {rev} not found")
        sha, files = snapshot
        if path not in files:
            return Reply.error(404, "EntryNotFound", f"{path} not found in {repo}@{rev}")
        content = files[path]
        return Reply(
            200,
            content,
            {
                "X-Repo-Commit": sha,
                "ETag": f'"{git_blob_id(content)}"',
                "Content-Type": "application/octet-stream",
            },
        )


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            reply = hub.handle(self.command, self.path, self.headers, body)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler


class FakeHubServer:
    """``with FakeHubServer() as hub: ...`` serves on ``hub.url`` (127.0.0.1, a free port) until the block ends."""

    def __init__(self) -> None:
        self.hub = FakeHub()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self.hub))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.hub.url = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self.hub

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
