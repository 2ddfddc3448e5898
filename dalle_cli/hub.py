"""Fetch hub repos into the local cache, and say what is already there.

Downloads go through huggingface_hub into its standard cache, so
`HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_TOKEN` work as everywhere else. Only the files a
registry entry lists are fetched (for other hub ids: JSON configs, tokenizer merges and `*.safetensors`), never pickle
twins. The total size is announced before the first byte, and huggingface_hub resumes a dropped transfer with a Range
request. Every failure becomes a one-line `DalleError`. Importing this module does not import torch.

Every network wait is bounded by huggingface_hub's own settings (environment variables it reads when imported):
- `HF_HUB_ETAG_TIMEOUT` (default 10 s) bounds each metadata request, to connect and for each read: the file listing
  a fetch asks for first (announced through `on_notice` beforehand: what, of which endpoint, for how long), and
  huggingface_hub's own look-up of the commit, tree listing and per-file look-ups. The first two are asked once: no
  answer in time fails the fetch with a one-line `DownloadError` naming the endpoint, the wait and the setting (hint
  "offline"). huggingface_hub retries the other two 5 times, 1-8 s apart (a look-up's retries would wait 60 s each;
  they are lowered to this setting).
- `HF_HUB_DOWNLOAD_TIMEOUT` (default 10 s) bounds each read of a file transfer. On expiry huggingface_hub resumes
  the transfer with a Range request, up to 5 times in a row without a new byte, 1 s apart, then the fetch fails the
  same way, naming the server that did not answer.
- huggingface_hub's look-up of AI-agent names (`/api/agent-harnesses`; its answer is kept a day) waits up to 3 s.
So a hub that accepts connections and never answers fails a fetch after about HF_HUB_ETAG_TIMEOUT + 3 s; one that
stops answering midway, after at most 7 x HF_HUB_ETAG_TIMEOUT + 23 s (a look-up) or 6 x HF_HUB_DOWNLOAD_TIMEOUT + 5 s
(a transfer).

An interrupt (Ctrl-C) during a download raises `DownloadInterrupted`, which says how many files the cache keeps. The
files huggingface_hub is transferring at that moment are finished first (its worker threads are not stopped); a
partial file is resumed by the next fetch.
"""

import errno
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from huggingface_hub import constants  # light; the client and its HTTP stack (~0.3 s) load when a repo is touched

from .errors import CheckpointError, DownloadError, DownloadInterrupted, ModelNotFoundError
from .registry import FORBIDDEN_SUFFIXES, PICKLE_SUFFIXES, Entry, Repo, format_size

Notice = Callable[[str], None]
DEFAULT_FILES = ("*.json", "*merges.txt", "*.safetensors")  # for hub ids outside the registry
NEVER = tuple(f"*{suffix}" for suffix in FORBIDDEN_SUFFIXES)
COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Source:
    """One hub repo to fetch: `files` are the paths or fnmatch patterns wanted. With `strict`, every pattern must match
    a file of the repo (registry entries); `size_bytes` is the registry's figure, for messages while offline."""

    name: str
    repo_id: str
    revision: str
    files: tuple[str, ...]
    size_bytes: int | None = None
    strict: bool = False


@dataclass(frozen=True)
class Status:
    """What a registry entry has on disk: `state` is "downloaded", "partial" or "missing"; `size` in bytes."""

    state: str
    size: int
    folder: Path | None


def cache_dir() -> Path:
    """huggingface_hub's cache folder, as HF_HOME / HF_HUB_CACHE set it."""
    return Path(constants.HF_HUB_CACHE)


def is_offline(offline: bool = False) -> bool:
    """Offline when asked to, or when HF_HUB_OFFLINE is set."""
    return offline or constants.is_offline_mode()


def source_of(entry: Entry, repo: Repo) -> Source:
    """One hub repo of a registry entry, named by the entry's alias in messages, with the entry's whole size."""
    return Source(entry.alias, repo.repo_id, repo.revision, repo.files, entry.size_bytes, strict=True)


def folder_size(folder: Path) -> int:
    """Bytes of the files under `folder`, following the cache's symlinks to their blobs."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@contextmanager
def _hub_errors(source: Source) -> Iterator[None]:
    """Turn huggingface_hub and network failures into one-line `DalleError`s naming the model."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{source.repo_id}@{source.revision}"
    try:
        try:
            yield
        except Exception as e:
            stalled = _stall(e, source)
            if stalled is None:
                raise
            raise DownloadError(stalled, hint="offline") from None
    except GatedRepoError:
        raise DownloadError(f"{source.repo_id} is gated: accept its terms at {constants.ENDPOINT}/{source.repo_id} and "
                            "set HF_TOKEN to a token of that account") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"unknown model {source.name!r}: {constants.ENDPOINT} has no repo {source.repo_id} "
                                 "(set HF_TOKEN if it is private)") from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{source.repo_id} has no revision {source.revision!r}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "an error"
        hint = ": set HF_TOKEN to a token with access" if status in (401, 403) else ""
        raise DownloadError(f"the Hub answered {status} for {where}{hint}") from None
    except IncompleteSnapshotError:
        raise DownloadError(f"{source.name} is only partly downloaded and the Hub cannot be reached", hint="pull",
                            model=source.name) from None
    except (LocalEntryNotFoundError, OSError) as e:
        if getattr(e, "errno", None) == errno.ENOSPC:
            raise DownloadError(f"the disk is full: {source.name} did not fit in {cache_dir()}") from None
        if isinstance(e, LocalEntryNotFoundError):
            raise DownloadError(f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} to download {where}; "
                                "check the connection (or set HF_ENDPOINT)") from None
        raise DownloadError(f"downloading {where} failed: {str(e).splitlines()[0]}") from None
    except httpx2.TransportError as e:  # connection refused or dropped (after huggingface_hub's retries)
        raise DownloadError(f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no answer'}); check the connection",
                            hint="offline") from None


def _short(source: Source) -> str:
    """`repo@revision`, a commit hash cut to 7 characters as the Hub shows it."""
    revision = source.revision[:7] if COMMIT.fullmatch(source.revision) else source.revision
    return f"{source.repo_id}@{revision}"


def _stall(error: BaseException, source: Source) -> str | None:
    """The message for a request that timed out, found in `error` or what it wraps (huggingface_hub turns some
    timeouts into its own errors): who did not answer, within which setting, while doing what. None if none did."""
    import httpx2

    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and not isinstance(found, httpx2.TimeoutException) and id(found) not in seen:
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    if not isinstance(found, httpx2.TimeoutException):
        return None
    try:
        request: httpx2.Request | None = found.request
    except RuntimeError:  # raised without its request: only huggingface_hub's listing calls are left to blame
        request = None
    url = str(request.url) if request is not None else f"{constants.ENDPOINT}/api/"
    listing = url.startswith(f"{constants.ENDPOINT}/api/")
    transfer = request is not None and request.method == "GET" and not listing
    setting = "HF_HUB_DOWNLOAD_TIMEOUT" if transfer else "HF_HUB_ETAG_TIMEOUT"
    if url.startswith(f"{constants.ENDPOINT}/") or request is None:
        who = f"the Hugging Face Hub at {constants.ENDPOINT}"
    else:  # the host the Hub redirected a file to
        who = f"the file server {request.url.scheme}://{request.url.netloc.decode()}"
    doing = "downloading" if transfer else "listing" if listing else "looking up the files of"
    return (f"{who} did not answer within {getattr(constants, setting)} s ({setting}) while {doing} {_short(source)}; "
            "check the connection")


@contextmanager
def _bounded_waits() -> Iterator[None]:
    """While the block runs, no request huggingface_hub sends waits unbounded: one it sends without a timeout (its
    repo and tree listings, which take no timeout argument), or with one above both settings (the 60 s of its per-file
    look-up retries), waits HF_HUB_ETAG_TIMEOUT instead. Timeouts it takes from the settings are kept.

    Works through a request hook on huggingface_hub's shared HTTP client, removed again afterwards; a client it
    replaces meanwhile (it does after a refused connection) goes without."""
    import httpx2
    from huggingface_hub.utils import get_session

    limit = float(constants.HF_HUB_ETAG_TIMEOUT)
    ceiling = max(constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT)

    def bound(request: httpx2.Request) -> None:
        given = request.extensions.get("timeout", {})
        request.extensions["timeout"] = {
            phase: limit if given.get(phase) is None or given[phase] > ceiling else given[phase]
            for phase in ("connect", "read", "write", "pool")}

    client = get_session()
    hooks = client.event_hooks
    client.event_hooks = {**hooks, "request": [*hooks["request"], bound]}
    try:
        yield
    finally:
        hooks = client.event_hooks
        client.event_hooks = {**hooks, "request": [hook for hook in hooks["request"] if hook is not bound]}


def cached(source: Source) -> Status:
    """Whether `source` is complete in the cache, checked against the file listing huggingface_hub keeps with each
    download. No network access."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(source.repo_id, revision=source.revision, allow_patterns=list(source.files),
                                        ignore_patterns=list(NEVER), local_files_only=True))
    except IncompleteSnapshotError as e:
        partial = Path(e.snapshot_path) if getattr(e, "snapshot_path", None) else None
        return Status("partial", folder_size(partial) if partial else 0, None)
    except (LocalEntryNotFoundError, OSError):
        return Status("missing", 0, None)
    return Status("downloaded", folder_size(folder), folder)


def _plan(source: Source) -> tuple[str, dict[str, int]]:
    """The commit the revision points at and the {path: size} of the files to fetch, from the Hub's listing.

    Raises `CheckpointError` when a strict source misses a listed file, or when a component folder has only pickle
    weights (which dalle would not fetch, leaving the model unloadable)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    info = HfApi().model_info(source.repo_id, revision=source.revision, files_metadata=True,
                              timeout=constants.HF_HUB_ETAG_TIMEOUT)  # its default is to wait forever
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    wanted = set(filter_repo_objects(sizes, allow_patterns=list(source.files), ignore_patterns=list(NEVER)))
    where = f"{source.repo_id}@{source.revision}"
    if source.strict:
        absent = [pattern for pattern in source.files if not list(filter_repo_objects(sizes, allow_patterns=pattern))]
        if absent:
            raise CheckpointError(f"{where} has no {absent[0]}, which the registry entry {source.name!r} lists")
    # A folder this source takes files from, whose weights are pickles only (a folder it does not take from, such as
    # the image encoder of a repo split into parts, is another source's business).
    pickled = {os.path.dirname(f) for f in sizes if f.lower().endswith(PICKLE_SUFFIXES)}
    taken = {os.path.dirname(f) for f in wanted}
    safe = {os.path.dirname(f) for f in wanted if f.endswith(".safetensors")}
    if (pickled & taken) - safe:
        folder = sorted((pickled & taken) - safe)[0] or "the repo root"
        raise CheckpointError(f"{where} has only pickle weights in {folder} (no .safetensors); dalle loads safetensors "
                              "only, so pick a revision that has them")
    return str(info.sha), {f: sizes[f] for f in sorted(wanted)}


def _free_space(folder: Path) -> int:
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def fetch(source: Source, *, offline: bool, on_notice: Notice | None = None, why: str = "") -> Path:
    """The local snapshot folder of `source`, downloading what is missing first. Before the first request,
    `on_notice` hears what is asked of which endpoint and for how long it waits; before the first byte, the size.
    Nothing is announced when nothing needs downloading.

    Raises `DownloadError` when offline and not downloaded, or when the download fails or a wait times out, and
    `DownloadInterrupted` (a `KeyboardInterrupt`) when interrupted while fetching, saying what the cache kept."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.file_download import repo_folder_name

    notify = on_notice or (lambda message: None)
    status = cached(source)
    if status.state == "downloaded" and status.folder is not None:
        return status.folder
    if is_offline(offline):
        state = "only partly downloaded" if status.state == "partial" else "not downloaded"
        needs = f": it needs {format_size(source.size_bytes)}" if source.size_bytes else ""
        raise DownloadError(f"{source.name} is {state} and dalle is offline{needs}", hint="pull", model=source.name)
    have: Path | None = None
    files: dict[str, int] = {}
    try:
        with _hub_errors(source), _bounded_waits():
            notify(f"asking {constants.ENDPOINT} for the files of {_short(source)} (waits up to "
                   f"{constants.HF_HUB_ETAG_TIMEOUT} s; HF_HUB_ETAG_TIMEOUT sets it)")
            commit, files = _plan(source)
            have = cache_dir() / repo_folder_name(repo_id=source.repo_id, repo_type="model") / "snapshots" / commit
            missing = {f: size for f, size in files.items() if not (have / f).is_file()}
            total, left = sum(files.values()), sum(missing.values())
            done = f", {format_size(total - left)} already here" if left < total else ""
            notify(f"downloading {source.name}{why}: {format_size(left)} in {len(missing)} files from "
                   f"{source.repo_id}@{commit[:7]}{done}, into {cache_dir()}")
            free = _free_space(cache_dir())
            if left > free:
                raise DownloadError(f"not enough disk space for {source.name}: it needs {format_size(left)}, and "
                                    f"{cache_dir()} has {format_size(free)} free")
            folder = snapshot_download(source.repo_id, revision=source.revision, allow_patterns=list(source.files),
                                       ignore_patterns=list(NEVER), etag_timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except KeyboardInterrupt:
        raise _interrupted(source, have, files) from None
    return Path(folder)


def _interrupted(source: Source, snapshot: Path | None, files: dict[str, int]) -> DownloadInterrupted:
    """What an interrupted fetch of `source` kept: the `files` ({path: size}) planned for `snapshot` that are
    complete there (huggingface_hub links a file into the snapshot only once it is whole)."""
    if snapshot is None:
        return DownloadInterrupted(f"the download of {source.name} stopped before its first file; the cache is as "
                                   "it was", model=source.name, kept=0, total=0, size=0)
    kept = {f: size for f, size in files.items() if (snapshot / f).is_file()}
    size = sum(kept.values())
    return DownloadInterrupted(f"the download of {source.name} stopped: {len(kept)} of {len(files)} files "
                               f"({format_size(size)}) are kept in the cache, and fetching it again resumes the rest",
                               model=source.name, kept=len(kept), total=len(files), size=size)


def status(entry: Entry) -> Status:
    """What a registry entry has on disk, all its repos together, without network access; `folder` is its first
    repo's (or its local folder)."""
    if entry.path is not None:
        present = entry.path.is_dir()
        return Status("downloaded" if present else "missing", folder_size(entry.path) if present else 0,
                      entry.path if present else None)
    found = [cached(source_of(entry, repo)) for repo in entry.repos.values()]
    states = {s.state for s in found}
    state = states.pop() if len(states) == 1 else "partial"
    return Status(state, sum(s.size for s in found), found[0].folder if state == "downloaded" else None)
