"""Network waits have timeouts: a hub that accepts connections and never answers, or stops answering in the middle of
a fetch, fails `dalle pull` within huggingface_hub's own timeouts (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT),
with the stall announced before the wait and named in the one error line. An interrupted download says what the cache
kept.

The CLI runs in subprocesses, as huggingface_hub reads HF_ENDPOINT and the timeouts when it is imported; the
interruption tests run `fetch` in-process with the constants it reads at call time patched.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import _snapshot_download, constants

from dalle_cli.errors import DownloadInterrupted
from dalle_cli.hub import Source, fetch
from fakehub import FakeHub, Repo
from test_hub import ROOT, error_line

TIMEOUTS = {"HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
PARTS = Repo("dalle-test/parts", {"config.json": b"{}".ljust(100_000), **{
    f"{name}.safetensors": bytes([i]) * 100_000 for i, name in enumerate(["a", "b", "c"])}})


class SilentHub:
    """A server on 127.0.0.1 that accepts every connection and never answers, as a hub behind a stuck proxy does.
    Use as a context manager; `endpoint` is the value for HF_ENDPOINT, `connections` counts what it accepted."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # lets the accepting thread see the stop
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self._held.append(self._listener.accept()[0])
            except TimeoutError:
                continue

    def __enter__(self) -> "SilentHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self._held:
            connection.close()
        self._listener.close()


def pull(repo_id: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """`dalle pull repo_id` with only `env` (and the test timeouts) of HF_* set: (result, wall-clock seconds)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DALLE_"))}
    environment.update(TIMEOUTS, **env, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dalle_cli.cli", "pull", repo_id], env=environment, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - started


def notice_then_error(result: subprocess.CompletedProcess, notice: str) -> str:
    """The one error line of a failed pull, asserting that `notice` came on stderr before it."""
    line = error_line(result, 1)
    assert notice in result.stderr and result.stderr.index(notice) < result.stderr.index(line), result.stderr
    return line


def test_a_hub_that_never_answers_fails_pull_within_the_timeout(tmp_path: Path) -> None:
    with SilentHub() as hub:
        result, seconds = pull("some/repo", {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint})
        assert hub.connections >= 1  # it was asked, and kept the connection open without a word
    print(f"silent hub: the error came after {seconds:.1f} s")
    line = notice_then_error(result, f"asking {hub.endpoint} for the files of some/repo@main (waits up to 2 s; "
                                     "HF_HUB_ETAG_TIMEOUT sets it)")
    assert line.startswith(f"error: the Hugging Face Hub at {hub.endpoint} did not answer within 2 s "
                           "(HF_HUB_ETAG_TIMEOUT) while listing some/repo@main; check the connection")
    assert seconds < 20


def test_a_listing_without_a_timeout_argument_still_times_out(tmp_path: Path) -> None:
    """huggingface_hub's own repo listing in snapshot_download takes no timeout and would wait forever."""
    stalled = f"/api/models/{PARTS.repo_id}/revision/main"  # repo_info; dalle's own listing adds ?blobs=True
    with FakeHub([PARTS], stall={stalled}) as hub:
        result, seconds = pull(PARTS.repo_id, {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint})
        assert stalled in [r.path for r in hub.log]
    print(f"stalled repo listing: the error came after {seconds:.1f} s")
    line = notice_then_error(result, f"downloading {PARTS.repo_id}: 400.0 kB in 4 files")
    assert f"the Hugging Face Hub at {hub.endpoint} did not answer within 2 s (HF_HUB_ETAG_TIMEOUT) while listing " \
           f"{PARTS.repo_id}@main" in line
    assert seconds < 20


def test_a_transfer_that_stops_answering_fails_after_its_resumes(tmp_path: Path) -> None:
    """The file server answers nothing for one blob: huggingface_hub retries the transfer 5 times (each waits
    HF_HUB_DOWNLOAD_TIMEOUT, 1 s apart), then the pull fails naming the file server and the setting."""
    import hashlib

    blob = hashlib.sha256(PARTS.files["b.safetensors"]).hexdigest()
    with FakeHub([PARTS], stall={f"/blobs/{blob}"}) as hub:
        result, seconds = pull(PARTS.repo_id, {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint,
                                               "HF_HUB_DOWNLOAD_TIMEOUT": "1"})
        tries = [r for r in hub.log if r.server == "cdn" and r.path == f"/blobs/{blob}"]
    print(f"stalled transfer: the error came after {seconds:.1f} s, {len(tries)} tries")
    assert len(tries) == 6
    line = notice_then_error(result, f"downloading {PARTS.repo_id}: 400.0 kB in 4 files")
    assert f"the file server {hub.cdn} did not answer within 1 s (HF_HUB_DOWNLOAD_TIMEOUT) while downloading " \
           f"{PARTS.repo_id}@main" in line
    assert seconds < 30


@pytest.fixture
def in_process_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The stand-in hub serving PARTS, with huggingface_hub in this process pointed at it and at a fresh cache."""
    with FakeHub([PARTS]) as hub:
        for name, value in {"ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": False,
                            "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
                            "AGENT_HARNESSES_PATH": str(tmp_path / "agents.json")}.items():
            monkeypatch.setattr(constants, name, value)
        yield hub


def test_an_interrupted_download_says_what_the_cache_kept(in_process_hub: FakeHub,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    source = Source("parts", PARTS.repo_id, "main", ("*.json", "*.safetensors"))
    download = _snapshot_download.hf_hub_download
    calls, lock = [], threading.Lock()

    def first_file_then_ctrl_c(*args: object, **kwargs: object) -> str:
        with lock:
            calls.append(kwargs["filename"])
            first = len(calls) == 1
        if first:
            return download(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(_snapshot_download, "hf_hub_download", first_file_then_ctrl_c)
    notes: list[str] = []
    with pytest.raises(DownloadInterrupted) as stopped:
        fetch(source, offline=False, on_notice=notes.append)
    assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.exit_code == 130
    assert str(stopped.value) == ("the download of parts stopped: 1 of 4 files (100.0 kB) are kept in the cache, and "
                                  "fetching it again resumes the rest")
    assert stopped.value.facts == {"model": "parts", "kept": 1, "total": 4, "size": 100_000}
    assert [note.split(" ")[0] for note in notes] == ["asking", "downloading"]

    monkeypatch.setattr(_snapshot_download, "hf_hub_download", download)
    seen = len(in_process_hub.log)
    folder = fetch(source, offline=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(PARTS.files)
    assert sorted(in_process_hub.fetched(since=seen)) == sorted(set(PARTS.files) - {calls[0]})  # only the rest


def test_an_interrupt_while_asking_says_nothing_was_fetched(in_process_hub: FakeHub,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi

    def ctrl_c(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(HfApi, "model_info", ctrl_c)
    with pytest.raises(DownloadInterrupted, match="^the download of parts stopped before its first file; the cache "
                                                  "is as it was$"):
        fetch(Source("parts", PARTS.repo_id, "main", ("*.json",)), offline=False)
