"""A loopback Hugging Face Hub: the subset of the Hub's HTTP API that huggingface_hub uses to push and load a model.

No pip-installable server speaks the Hub's upload protocol, and HTTP mocks do not apply to huggingface_hub's
`httpx2` client, so tests run the real client against this real server on 127.0.0.1. What it implements, from
reading huggingface_hub 2.4.0's client code:

    POST /api/repos/create                               create_repo
    POST /api/validate-yaml                              create_commit, before any upload of a README.md
    POST /api/models/{repo}/preupload/{rev}              upload mode (regular / lfs) and remote oid per file
    POST /{repo}.git/info/lfs/objects/batch              LFS batch API: where to PUT each object
    PUT  /_lfs/{repo}/{oid}                              the LFS object itself (sha256 and size verified)
    POST /_lfs_verify/{repo}/{oid}                       the LFS verify action
    POST /api/models/{repo}/commit/{rev}                 ndjson: header, file (base64), lfsFile, deletedFile/Folder
    POST /api/models/{repo}/branch/{branch}              create_branch
    GET  /api/models/{repo}[/revision/{rev}]             model_info / repo_info (siblings, sha)
    GET  /api/models/{repo}/tree/{rev}[/{path}]          list_repo_tree / list_repo_files
    HEAD|GET /{repo}/resolve/{rev}/{path}                hf_hub_download (X-Repo-Commit, ETag, X-Linked-Size, Range)
    GET  /api/whoami-v2                                  whoami

Writes need `Authorization: Bearer <token>` with the configured token; a wrong token is a 401 on any request, as on
the Hub. Errors carry the `X-Error-Code` headers the client turns into its typed exceptions.

Failure injection: `hub.fail("commit", "500" | "hang" | "drop", times=n)` makes the next n requests to that endpoint
answer 500, hang (until `hang_seconds` pass or the server stops), or close the connection without an answer.

    with loopback_hub(tmp_path, token="hf_...") as hub:
        env = hub.client_env()      # HF_ENDPOINT, HF_HUB_DISABLE_XET=1, no HF_HUB_OFFLINE: for a child process
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_TOKEN = "hf_loopbackTestToken0123456789abcdef"
USER = "loopback-user"
# Paths the Hub stores through LFS whatever their content (the defaults of a new repo's .gitattributes).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npy", ".npz", ".zip")
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)
# The Hub sends files over 10 MB or that look binary through LFS.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
FAILURE_MODES = ("500", "hang", "drop")
ENDPOINTS = (
    "create_repo", "validate_yaml", "preupload", "lfs_batch", "lfs_upload", "lfs_verify", "commit", "create_branch",
    "repo_info", "tree", "resolve", "whoami",
)  # fmt: skip


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class StoredFile:
    sha256: str  # the blob's content address in the store
    size: int
    lfs: bool

    def git_oid(self, hub: "LoopbackHub") -> str:
        if self.lfs:  # git stores the pointer file, not the content
            return git_blob_oid(_lfs_pointer(self.sha256, self.size))
        return git_blob_oid(hub.read_blob(self.sha256))


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Commit:
    oid: str
    message: str
    parent: str | None
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


@dataclass
class Failure:
    mode: str
    times: int


class HubError(Exception):
    """An error answer: status, the Hub's X-Error-Code, and a message for the JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class LoopbackHub:
    """The server's state: repos in memory, blob contents on disk under `root`, injected failures, a request log."""

    def __init__(self, root: Path, token: str = DEFAULT_TOKEN, hang_seconds: float = 30.0):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.hang_seconds = hang_seconds
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str, int]] = []  # (method, path, endpoint, status)
        self.timings: list[float] = []
        self._failures: dict[str, Failure] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._commit_counter = 0
        self._secret = os.urandom(16)  # signs the LFS upload URLs
        self.url = ""

    # ---- test controls -------------------------------------------------------------------------------------
    def fail(self, endpoint: str, mode: str = "500", times: int = 1) -> None:
        """Make the next `times` requests to `endpoint` fail with `mode` ("500", "hang" or "drop")."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
        if mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; expected one of {FAILURE_MODES}")
        with self._lock:
            self._failures[endpoint] = Failure(mode, times)

    def take_failure(self, endpoint: str) -> str | None:
        with self._lock:
            failure = self._failures.get(endpoint)
            if failure is None or failure.times <= 0:
                return None
            failure.times -= 1
            return failure.mode

    def calls(self, endpoint: str) -> int:
        return sum(1 for _, _, name, _ in self.requests if name == endpoint)

    def client_env(self, base: dict | None = None) -> dict[str, str]:
        """Environment for a child process whose huggingface_hub must talk to this server (and only to it)."""
        env = dict(os.environ if base is None else base)
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("TRANSFORMERS_OFFLINE", None)
        env.update(HF_ENDPOINT=self.url, HF_HUB_DISABLE_XET="1")
        return env

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Every file of a revision, with its content: what a test compares with the local folder."""
        commit = self.repos[repo_id].resolve(revision)
        return {path: self.read_blob(f.sha256) for path, f in commit.files.items()}

    def publish(self, repo_id: str, folder: Path, private: bool = False) -> None:
        """Make a repo whose main branch holds every file of a local folder, as a model someone already pushed
        (no upload requests: tests of loading start from here)."""
        repo = self.repos.get(repo_id) or self.create_repo(repo_id, private)
        commit = repo.resolve("main")
        files = dict(commit.files) if commit else {}
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                content = path.read_bytes()
                lfs = path.suffix in LFS_SUFFIXES or len(content) > LFS_SIZE_THRESHOLD
                files[path.relative_to(folder).as_posix()] = StoredFile(self.store_blob(content), len(content), lfs)
        self.new_commit(repo, "main", f"Upload {Path(folder).name}", files)

    # ---- storage -------------------------------------------------------------------------------------------
    def store_blob(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        path = self.root / "blobs" / sha256
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(content)
            tmp.replace(path)
        return sha256

    def sign(self, repo_id: str, oid: str) -> str:
        return hmac.new(self._secret, f"{repo_id}/{oid}".encode(), hashlib.sha256).hexdigest()

    def has_blob(self, sha256: str) -> bool:
        return (self.root / "blobs" / sha256).is_file()

    def read_blob(self, sha256: str) -> bytes:
        return (self.root / "blobs" / sha256).read_bytes()

    def new_commit(self, repo: Repo, branch: str, message: str, files: dict[str, StoredFile]) -> Commit:
        with self._lock:
            self._commit_counter += 1
            parent = repo.branches.get(branch)
            oid = hashlib.sha1(f"{repo.repo_id}\n{parent}\n{message}\n{self._commit_counter}".encode()).hexdigest()
            commit = Commit(oid=oid, message=message, parent=parent, files=files)
            repo.commits[oid] = commit
            repo.branches[branch] = oid
            return commit

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        with self._lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo", headers={"X-Error-Code": "RepoExists"})
            repo = self.repos[repo_id] = Repo(repo_id=repo_id, private=private)
        # A new Hub repo starts with one commit holding its .gitattributes.
        attributes = GITATTRIBUTES.encode()
        self.new_commit(repo, "main", "initial commit", {".gitattributes": StoredFile(self.store_blob(attributes), len(attributes), lfs=False)})
        return repo


# ---- HTTP ----------------------------------------------------------------------------------------------------
_REPO = r"(?P<repo>[\w.-]+(?:/[\w.-]+)?)"
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(rf"^/_lfs/{_REPO}/(?P<oid>[0-9a-f]{{64}})$"), "lfs_upload"),
    ("POST", re.compile(rf"^/_lfs_verify/{_REPO}/(?P<oid>[0-9a-f]{{64}})$"), "lfs_verify"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$"), "create_branch"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$"), "tree"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "repo_info"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    hub: LoopbackHub  # set on the subclass made per server

    def log_message(self, format, *args):  # keep test output clean; the hub keeps its own request log
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # ---- plumbing ----
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._read_body()
        for route_method, pattern, endpoint in _ROUTES:
            match = pattern.match(path)
            if route_method == method and match:
                break
        else:
            endpoint, match = "unknown", None
        status = 0
        started = time.monotonic()
        try:
            mode = self.hub.take_failure(endpoint)
            if mode == "drop":
                self.hub.requests.append((method, path, endpoint, -1))
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if mode == "hang":
                self.hub.requests.append((method, path, endpoint, -2))
                self.hub._stopping.wait(self.hub.hang_seconds)
                self.close_connection = True
                return
            if mode == "500":
                raise HubError(500, "Internal Error - We're working hard to fix this as soon as possible!")
            if match is None:
                raise HubError(404, f"no route for {method} {path}")
            # LFS object uploads are authorised by their signed URL instead of the token.
            self._check_token(write=method == "POST" and endpoint != "validate_yaml")
            status = getattr(self, f"_{endpoint}")(body=body, **{k: v for k, v in match.groupdict().items()})
        except HubError as error:
            status = error.status
            headers = dict(error.headers)
            if error.code:
                headers["X-Error-Code"] = error.code
            headers["X-Error-Message"] = error.message
            self._send_json(error.status, {"error": error.message}, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if status:
            self.hub.requests.append((method, path, endpoint, status))
            self.hub.timings.append(time.monotonic() - started)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk)
        return b""

    def _send(self, status: int, content: bytes, headers: dict | None = None) -> int:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of the GET but no body, errors included
            self.wfile.write(content)
        return status

    def _send_json(self, status: int, payload, headers: dict | None = None) -> int:
        return self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _check_token(self, write: bool) -> None:
        header = self.headers.get("Authorization")
        if header is None:
            if write:
                raise HubError(401, "You must be authenticated to access this resource", code="Unauthorized")
            return
        if header != f"Bearer {self.hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _authenticated(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _repo(self, repo_id: str) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._authenticated()):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _commit_of(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(unquote(rev))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return commit

    # ---- endpoints ----
    def _whoami(self, body: bytes) -> int:
        if not self._authenticated():
            raise HubError(401, "Invalid credentials in Authorization header")
        return self._send_json(200, {"type": "user", "name": USER, "orgs": [], "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}}})

    def _create_repo(self, body: bytes) -> int:
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            raise HubError(400, "this loopback Hub stores model repos only")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        if repo_id in self.hub.repos:  # the Hub's 409 still names the repo's URL, which create_repo(exist_ok) returns
            message = "You already created this model repo"
            return self._send_json(409, {"error": message, "url": f"{self.hub.url}/{repo_id}"}, {"X-Error-Message": message})
        self.hub.create_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        return self._send_json(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, body: bytes) -> int:
        content = json.loads(body)["content"]
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        if match is None:
            return self._send_json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            return self._send_json(400, {"errors": [{"message": f"invalid YAML: {error}"}]})
        if not isinstance(metadata, dict):
            return self._send_json(400, {"errors": [{"message": "YAML metadata must be a mapping"}]})
        return self._send_json(200, {"errors": [], "warnings": []})

    def _preupload(self, body: bytes, repo: str, rev: str) -> int:
        commit = self._commit_of(self._repo(repo), rev)
        answers = []
        for entry in json.loads(body)["files"]:
            sample = base64.b64decode(entry["sample"])
            lfs = entry["path"].endswith(LFS_SUFFIXES) or entry["size"] > LFS_SIZE_THRESHOLD or b"\0" in sample
            existing = commit.files.get(entry["path"])
            # The remote oid lets the client skip unchanged files: sha256 for LFS files, git blob sha1 otherwise.
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid(self.hub))
            answers.append({"path": entry["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return self._send_json(200, {"files": answers, "commitOid": commit.oid})

    def _lfs_batch(self, body: bytes, repo: str) -> int:
        self._repo(repo)
        request = json.loads(body)
        if request.get("operation") != "upload" or request.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, "only sha256 uploads are supported")
        objects = []
        for obj in request["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.hub.has_blob(obj["oid"]):  # no "actions": the client skips objects the Hub already has
                answer["actions"] = {
                    # Like the Hub's presigned storage URLs: the PUT carries no token, the URL itself is the credential.
                    "upload": {"href": f"{self.hub.url}/_lfs/{repo}/{obj['oid']}?signature={self.hub.sign(repo, obj['oid'])}"},
                    "verify": {"href": f"{self.hub.url}/_lfs_verify/{repo}/{obj['oid']}"},
                }
            objects.append(answer)
        return self._send_json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_upload(self, body: bytes, repo: str, oid: str) -> int:
        if not hmac.compare_digest(self.query.get("signature", ""), self.hub.sign(repo, oid)):
            raise HubError(403, "Request has expired or its signature does not match")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"content does not match its sha256 {oid}")
        self.hub.store_blob(body)
        return self._send(200, b"")

    def _lfs_verify(self, body: bytes, repo: str, oid: str) -> int:
        self._repo(repo)
        request = json.loads(body)
        if not self.hub.has_blob(oid) or len(self.hub.read_blob(oid)) != request["size"]:
            raise HubError(404, f"object {oid} was not uploaded with size {request['size']}")
        return self._send_json(200, {"success": True})

    def _commit(self, body: bytes, repo: str, rev: str) -> int:
        repository = self._repo(repo)
        branch = unquote(rev)
        if branch not in repository.branches:
            raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        files = dict(repository.resolve(branch).files)
        message = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value["summary"]
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "file content must be base64")
                content = base64.b64decode(value["content"])
                files[value["path"]] = StoredFile(self.hub.store_blob(content), len(content), lfs=False)
            elif key == "lfsFile":
                if not self.hub.has_blob(value["oid"]):
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                size = len(self.hub.read_blob(value["oid"]))
                files[value["path"]] = StoredFile(value["oid"], size, lfs=True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", code="EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        if not message:
            raise HubError(400, "a commit needs a summary")
        commit = self.hub.new_commit(repository, branch, message, files)
        return self._send_json(200, {"success": True, "commitOid": commit.oid, "commitUrl": f"{self.hub.url}/{repo}/commit/{commit.oid}", "pullRequestUrl": None})

    def _create_branch(self, body: bytes, repo: str, rev: str) -> int:
        repository = self._repo(repo)
        branch = unquote(rev)
        if branch in repository.branches:
            raise HubError(409, f"Branch {branch} already exists")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        repository.branches[branch] = self._commit_of(repository, start).oid
        return self._send_json(200, {})

    def _repo_info(self, body: bytes, repo: str, rev: str | None = None) -> int:
        repository = self._repo(repo)
        commit = self._commit_of(repository, rev or "main")
        return self._send_json(200, {
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo, "author": repo.split("/")[0],
            "sha": commit.oid, "private": repository.private, "gated": False, "disabled": False, "tags": [],
            "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        })  # fmt: skip

    def _tree(self, body: bytes, repo: str, rev: str, path: str | None = None) -> int:
        commit = self._commit_of(self._repo(repo), rev)
        recursive = self.query.get("recursive", "false").lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path else ""
        if path and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"{path} does not exist", code="EntryNotFound")
        entries: dict[str, dict] = {}
        for file_path, stored in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = prefix + "/".join(parts[:depth])
                if depth == 1 or recursive:
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()})
            if len(parts) == 1 or recursive:
                entry = {"type": "file", "path": file_path, "size": stored.size, "oid": stored.git_oid(self.hub)}
                if stored.lfs:
                    entry["lfs"] = {"oid": stored.sha256, "size": stored.size, "pointerSize": len(_lfs_pointer(stored.sha256, stored.size))}
                entries[file_path] = entry
        return self._send_json(200, list(entries.values()))

    def _resolve(self, body: bytes, repo: str, rev: str, path: str) -> int:
        commit = self._commit_of(self._repo(repo), rev)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        content = self.hub.read_blob(stored.sha256)
        etag = stored.sha256 if stored.lfs else stored.git_oid(self.hub)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": stored.size})
        status = 200
        byte_range = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if byte_range:
            start = int(byte_range.group(1))
            end = min(int(byte_range.group(2) or len(content) - 1), len(content) - 1)
            if start >= len(content):
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(content)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start : end + 1], 206
        return self._send(status, content, headers)


def use_in_this_process(hub: LoopbackHub, monkeypatch, cache_dir: Path) -> None:
    """Point this process's huggingface_hub at the loopback hub, online, with `cache_dir` (an empty folder) as its
    cache (it read HF_ENDPOINT, HF_HUB_OFFLINE and the cache path at import); pytest's `monkeypatch` restores
    everything after the test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@contextlib.contextmanager
def loopback_hub(root: Path, *, token: str = DEFAULT_TOKEN, hang_seconds: float = 30.0):
    """Run a LoopbackHub on 127.0.0.1 (a free port) in a thread; yields the hub, whose `url` is the endpoint."""
    hub = LoopbackHub(root, token=token, hang_seconds=hang_seconds)
    handler = type("LoopbackHubHandler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub._stopping.set()  # release hanging handlers
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

