"""A local stand-in for the Hugging Face Hub's HTTP API, for tests: just enough of it for `HfApi.create_repo`,
`create_branch`, `upload_folder` (preupload answers "regular", so file contents arrive inline in the commit),
`ModelCard.validate` and `snapshot_download`, and it records every request it receives.

Point huggingface_hub at it with HF_ENDPOINT (read when huggingface_hub is imported, so set it in a subprocess's
environment). Card validation here is a local stand-in too: the YAML must parse into huggingface_hub's
ModelCardData (model-index included); the real Hub checks more.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "harnesses"),
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("POST", re.compile(rf"^/api/models/{REPO}/branch/(?P<rev>[^/]+)$"), "branch"),
    ("POST", re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{REPO}/revision/(?P<rev>[^/]+)$"), "info"),
    ("GET", re.compile(rf"^/api/models/{REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?$"), "tree"),
    ("HEAD", re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Repo:
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit id -> {path: content}
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit id

    def commit(self, parent: str | None, files: dict[str, bytes]) -> str:
        oid = hashlib.sha1(
            f"{parent}{sorted((p, hashlib.sha1(c).hexdigest()) for p, c in files.items())}".encode()
        )
        self.commits[oid.hexdigest()] = files
        return oid.hexdigest()

    def resolve(self, rev: str) -> str | None:
        return self.branches.get(rev, rev if rev in self.commits else None)


def blob_id(content: bytes) -> str:
    """The git blob id the Hub reports as a file's oid (and ETag) for a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class StandInHub:
    """`with StandInHub(token) as hub:` serves on hub.url; hub.requests and hub.repos show what arrived."""

    def __init__(self, token: str):
        self.token = token
        self.requests: list[Request] = []
        self.repos: dict[str, Repo] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "StandInHub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(rev)]

    # --- request handling --------------------------------------------------------------------------------------
    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urlsplit(self.path).path
                hub.requests.append(
                    Request(method, path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                for verb, pattern, name in ROUTES:
                    match = pattern.match(path)
                    if verb == method and match:
                        args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        status, headers, payload = getattr(hub, f"_{name}")(self, body, **args)
                        break
                else:
                    status, headers, payload = (
                        404,
                        {},
                        {"error": f"stand-in Hub: no route for {method} {path}"},
                    )
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(data)),
                    **headers,
                }.items():
                    self.send_header(key, value)
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_HEAD(self) -> None:
                self._serve("HEAD")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler

    def _authorized(self, handler) -> bool:
        return handler.headers.get("Authorization") == f"Bearer {self.token}"

    def _repo(self, repo_id: str):
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, (404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"})
        return repo, None

    def _revision(self, repo_id: str, rev: str):
        """(repo, commit id, None), or (None, None, the 404 answer) for an unknown repo or revision."""
        found, error = self._repo(repo_id)
        if error:
            return None, None, error
        oid = found.resolve(rev)
        if oid is None:
            return (
                None,
                None,
                (404, {"X-Error-Code": "RevisionNotFound"}, {"error": f"Invalid rev id: {rev}"}),
            )
        return found, oid, None

    def _validate(self, handler, body: bytes):
        """Both callers (ModelCard.validate and upload_folder's README check) accept this JSON answer."""
        from huggingface_hub import ModelCard

        try:
            card = ModelCard(json.loads(body)["content"])  # parses the YAML and the model-index
            assert card.data.to_dict(), "empty metadata"
        except Exception as exc:
            return 400, {}, {"errors": [{"message": f"invalid card metadata: {exc}"}], "warnings": []}
        return 200, {}, {"errors": [], "warnings": []}

    def _harnesses(self, handler, body: bytes):
        return 200, {}, {"standardEnvVars": [], "harnesses": {}}

    def _create(self, handler, body: bytes):
        if not self._authorized(handler):
            return 401, {}, {"error": "Invalid credentials"}
        payload = json.loads(body)
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {}, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        repo = Repo(private=payload.get("visibility") == "private" or payload.get("private") is True)
        repo.branches["main"] = repo.commit(
            None, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
        )
        self.repos[repo_id] = repo
        return 200, {}, {"url": f"{self.url}/{repo_id}"}

    def _branch(self, handler, body: bytes, repo: str, rev: str):
        found, error = self._repo(repo)
        if error or not self._authorized(handler):
            return error or (401, {}, {"error": "Invalid credentials"})
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        if rev in found.branches:
            return 409, {}, {"error": "Branch already exists"}
        found.branches[rev] = found.resolve(start)
        return 200, {}, {}

    def _preupload(self, handler, body: bytes, repo: str, rev: str):
        found, error = self._repo(repo)
        if error:
            return error
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for f in json.loads(body)["files"]
        ]
        return 200, {}, {"files": files, "commitOid": found.resolve(rev)}

    def _commit(self, handler, body: bytes, repo: str, rev: str):
        found, error = self._repo(repo)
        if error or not self._authorized(handler):
            return error or (401, {}, {"error": "Invalid credentials"})
        parent = found.resolve(rev)
        files = dict(found.commits[parent])
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif item["key"] == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            elif item["key"] != "header":  # lfsFile: never asked for, since preupload says "regular"
                return 400, {}, {"error": f"stand-in Hub: unsupported commit entry {item['key']}"}
        found.branches[rev] = oid = found.commit(parent, files)
        return (
            200,
            {},
            {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None},
        )

    def _info(self, handler, body: bytes, repo: str, rev: str):
        found, oid, error = self._revision(repo, rev)
        if error:
            return error
        siblings = [{"rfilename": p} for p in sorted(found.commits[oid])]
        return (
            200,
            {},
            {"id": repo, "modelId": repo, "sha": oid, "private": found.private, "siblings": siblings},
        )

    def _tree(self, handler, body: bytes, repo: str, rev: str, path: str = ""):
        found, oid, error = self._revision(repo, rev)
        if error:
            return error
        prefix = path.strip("/")
        entries = [
            {"type": "file", "path": p, "size": len(c), "oid": blob_id(c)}
            for p, c in sorted(found.commits[oid].items())
            if not prefix or p.startswith(prefix + "/")
        ]
        return 200, {}, entries

    def _resolve(self, handler, body: bytes, repo: str, rev: str, path: str):
        found, error = self._repo(repo)
        if error:
            return error
        oid = found.resolve(rev)
        content = found.commits.get(oid, {}).get(path) if oid else None
        if content is None:
            return (
                404,
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid or ""},
                {"error": "Entry not found"},
            )
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{blob_id(content)}"',
            "Content-Type": "application/octet-stream",
        }
        return 200, headers, content
