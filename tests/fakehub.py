"""A stand-in Hugging Face Hub served on 127.0.0.1, for testing downloads through the real huggingface_hub client.

It implements the endpoints huggingface_hub 2.4 calls for `model_info`, `list_repo_tree`, `snapshot_download` and
`hf_hub_download`, answering as huggingface.co does:
- `GET /api/models/{repo}/revision/{rev}`: repo info with `sha` and `siblings` (with sizes, blob ids, LFS info);
- `GET /api/models/{repo}/tree/{rev}[/{path}]`: the file listing, one page;
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: small files directly (ETag = git blob id, Content-Length, X-Repo-Commit);
  LFS files (weights) as a 302 to a second "CDN" server on another port, with X-Linked-Etag (sha256), X-Linked-Size,
  X-Repo-Commit and Location, as the Hub redirects to its CDN;
- the CDN serves blobs with Content-Length and `Range: bytes=N-` (206 + Content-Range);
- `GET /api/agent-harnesses` (huggingface_hub's user-agent telemetry) gets an empty registry.
Errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound). No Xet headers are sent, so the
client downloads over plain HTTP. Every request is logged; anything else is a 404 logged as unexpected.

Faults for tests: `drop_once[file] = n` cuts the first GET of that file after n bytes (the connection closes
mid-body); `fail[file] = k` answers the next k GETs of that file with a 500; a request whose target (path and query,
as sent) is in `stall` is logged and never answered, its connection held open until the hub shuts down.
"""

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".msgpack", ".h5", ".ckpt", ".pt")


@dataclass
class Repo:
    """One model repo at one commit: {path in repo: content}."""

    repo_id: str
    files: dict[str, bytes]
    commit: str = ""

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1()
            for path in sorted(self.files):
                digest.update(path.encode() + b"\0" + hashlib.sha256(self.files[path]).digest())
            self.commit = digest.hexdigest()

    @staticmethod
    def from_folder(repo_id: str, folder: Path, extra: dict[str, bytes] | None = None) -> "Repo":
        """Every file under `folder`, plus `extra`."""
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return Repo(repo_id, {**files, **(extra or {})})


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


@dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str]
    expected: bool = True


@dataclass
class FakeHub:
    """Serve `repos` on two free ports of 127.0.0.1 (hub and CDN) from daemon threads. Use as a context manager;
    `endpoint` is the value for HF_ENDPOINT."""

    repos: list[Repo]
    drop_once: dict[str, int] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)
    stall: set[str] = field(default_factory=set)
    log: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._closing = threading.Event()  # releases the stalled requests
        self._by_id = {repo.repo_id: repo for repo in self.repos}
        self._blobs = {hashlib.sha256(c).hexdigest(): (p, c) for r in self.repos for p, c in r.files.items()}
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        self._hub.daemon_threads = self._cdn.daemon_threads = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        for server in (self._hub, self._cdn):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def fetched(self, since: int = 0) -> list[str]:
        """Repo paths of the files asked for with a GET from request `since` of the log on (CDN blobs mapped back
        to their path)."""
        with self._lock:
            gets = [r for r in self.log[since:] if r.method == "GET"]
        paths = []
        for r in gets:
            if r.server == "cdn":
                paths.append(self._blobs[r.path.rsplit("/", 1)[-1]][0])
            elif "/resolve/" in r.path:
                paths.append(r.path.split("/resolve/", 1)[1].split("/", 1)[1])
        return paths

    # -- request handling -------------------------------------------------------------------------------------------

    def _handler(self, server: str) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, server, body=False)

            def do_GET(self) -> None:
                hub._serve(self, server, body=True)

        return Handler

    def _record(self, handler: BaseHTTPRequestHandler, server: str, expected: bool) -> None:
        with self._lock:
            self.log.append(Request(server, handler.command, urlsplit(handler.path).path,
                                    {k.lower(): v for k, v in handler.headers.items()},
                                    expected))

    def _serve(self, handler: BaseHTTPRequestHandler, server: str, body: bool) -> None:
        if handler.path in self.stall:
            self._record(handler, server, True)
            self._closing.wait()
            handler.close_connection = True
            return
        path = unquote(urlsplit(handler.path).path)
        if server == "cdn":
            blob = self._blobs.get(path.removeprefix("/blobs/"))
            self._record(handler, server, blob is not None)
            if blob is None:
                return self._error(handler, 404, "EntryNotFound", body)
            return self._send_file(handler, blob[0], blob[1], {}, body)
        parts = path.strip("/").split("/")
        if path == "/api/agent-harnesses":  # huggingface_hub's user-agent telemetry: an empty registry
            self._record(handler, server, True)
            return self._json(handler, {"standardEnvVars": [], "harnesses": {}}, body)
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo_id, kind, rev, sub = "/".join(parts[2:4]), parts[4], parts[5], "/".join(parts[6:])
            self._record(handler, server, True)
            return self._api(handler, repo_id, kind, rev, sub, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            self._record(handler, server, True)
            return self._resolve(handler, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        self._record(handler, server, False)
        self._error(handler, 404, "EntryNotFound", body)

    def _repo(self, handler: BaseHTTPRequestHandler, repo_id: str, rev: str, body: bool) -> Repo | None:
        repo = self._by_id.get(repo_id)
        if repo is None:
            self._error(handler, 404, "RepoNotFound", body)
        elif rev not in (repo.commit, "main"):
            self._error(handler, 404, "RevisionNotFound", body)
            return None
        return repo

    def _api(self, handler: BaseHTTPRequestHandler, repo_id: str, kind: str, rev: str, sub: str, body: bool) -> None:
        repo = self._repo(handler, repo_id, rev, body)
        if repo is None:
            return
        if kind == "revision":
            siblings = [{"rfilename": p, "size": len(c), "blobId": git_blob_id(c),
                         **({"lfs": {"size": len(c), "sha256": hashlib.sha256(c).hexdigest(), "pointerSize": 134}}
                            if is_lfs(p) else {})} for p, c in sorted(repo.files.items())]
            payload: object = {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit, "private": False,
                               "siblings": siblings}
        else:
            files = {p: c for p, c in repo.files.items() if p.startswith(sub)}
            folders = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
            payload = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
                       for d in folders]
            payload += [{"type": "file", "path": p, "size": len(c), "oid": git_blob_id(c),
                         **({"lfs": {"oid": hashlib.sha256(c).hexdigest(), "size": len(c), "pointerSize": 134}}
                            if is_lfs(p) else {})} for p, c in sorted(files.items())]
        self._json(handler, payload, body)

    def _json(self, handler: BaseHTTPRequestHandler, payload: object, body: bool) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    def _resolve(self, handler: BaseHTTPRequestHandler, repo_id: str, rev: str, file: str, body: bool) -> None:
        repo = self._repo(handler, repo_id, rev, body)
        if repo is None:
            return
        if file not in repo.files:
            return self._error(handler, 404, "EntryNotFound", body, {"X-Repo-Commit": repo.commit})
        content = repo.files[file]
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{git_blob_id(content)}"'}
        if not is_lfs(file):
            return self._send_file(handler, file, content, headers, body)
        sha256 = hashlib.sha256(content).hexdigest()
        handler.send_response(302)
        for key, value in {**headers, "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(content)),
                           "Location": f"{self.cdn}/blobs/{sha256}", "Content-Length": "0"}.items():
            handler.send_header(key, value)
        handler.end_headers()

    def _send_file(self, handler: BaseHTTPRequestHandler, file: str, content: bytes, headers: dict[str, str],
                   body: bool) -> None:
        if body:
            with self._lock:
                failing = self.fail.get(file, 0)
                if failing:
                    self.fail[file] = failing - 1
                cut = self.drop_once.pop(file, None)
            if failing:
                return self._error(handler, 500, "", body)
        else:
            cut = None
        start = 0
        ranged = handler.headers.get("Range")
        if ranged and ranged.startswith("bytes=") and ranged.endswith("-"):
            start = int(ranged[len("bytes="):-1])
        handler.send_response(206 if start else 200)
        for key, value in headers.items():
            handler.send_header(key, value)
        if not headers.get("ETag"):
            handler.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(len(content) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        handler.end_headers()
        if not body:
            return
        if cut is not None:
            handler.wfile.write(content[start:cut])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(content[start:])

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str, body: bool,
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps({"error": code or "server error"}).encode()
        handler.send_response(status)
        if code:
            handler.send_header("X-Error-Code", code)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)

