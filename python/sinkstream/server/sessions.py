"""Named sessions: each id is one endless stream, kept in memory while used and on disk otherwise.

- A session is saved (Session.save: its sink cache, window, counter, chat record) to
  ``<state_dir>/<id>.session`` whenever it goes idle (after each request) and at shutdown, written
  to a temporary file and renamed, so a crash (kill -9) leaves the last complete save.
- At most ``max_sessions`` sessions and ``memory_budget`` bytes of session memory stay in memory;
  past that, the least recently used idle one is saved and dropped from memory (evicted). A request
  for an id that is on disk loads it back; so does the first request after a restart.
- shared=True (several servers on one state directory, e.g. Ray Serve replicas): a session is saved
  before its reply completes, and a copy in memory whose file another server has rewritten since is
  loaded again from the file, so a session can move between servers between two requests.
- Ids are 1-128 characters of [A-Za-z0-9_.-] not starting with '.', so an id never names a path
  outside the state directory.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from .errors import APIError, bad_request, too_many
from .metrics import Metrics

_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_MAGIC = b"SINKSTREAM-SERVER-SESSION\x001\n"
_SUFFIX = ".session"


def check_session_id(value: Any) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise bad_request("session_id must be 1-128 characters of letters, digits, '_', '-' and '.', "
                          f"not starting with '.'; got {value!r:.60}", param="session_id", code="invalid_session_id")
    return value


@dataclass
class SessionEntry:
    id: str
    kind: str                       # "chat" or "text": a session serves one kind of request
    options: dict[str, Any]         # mode, n_sink, window, kv_type: how to make its Session again
    session: Any = None             # the sinkstream.Session while in memory
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = 0.0
    dirty: bool = False             # changed since its last save
    saved_n_past: int | None = None
    bytes: int = 0
    stamp: tuple[int, int] | None = None  # (mtime_ns, size) of its file when this process last wrote or read it


def _write_state(path: str, header: dict[str, Any], blob: bytes) -> None:
    meta = json.dumps(header).encode()
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(_MAGIC + struct.pack("<I", len(meta)) + meta + blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_state(path: str) -> tuple[dict[str, Any], bytes]:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
        raise ValueError(f"{path} is not a saved server session")
    (n,) = struct.unpack_from("<I", data, len(_MAGIC))
    start = len(_MAGIC) + 4
    header = json.loads(data[start:start + n])
    return header, data[start + n:]


class SessionStore:
    def __init__(self, model: Any, state_dir: str | None, *, max_sessions: int = 64,
                 memory_budget: int | None = None, n_threads: int | None = None, metrics: Metrics | None = None,
                 shared: bool = False, prepare: Callable[[Any], Any] | None = None):
        """prepare: applied to each session the store makes (the server attaches it to its
        BatchScheduler)."""
        self.model = model
        self.prepare = prepare
        self.shared = shared
        self.state_dir = state_dir
        self.max_sessions = max_sessions
        self.memory_budget = memory_budget
        self.n_threads = n_threads
        self.metrics = metrics or Metrics()
        self.entries: dict[str, SessionEntry] = {}
        self._saves: set[asyncio.Task] = set()
        if state_dir is not None:
            os.makedirs(state_dir, exist_ok=True)
            for name in sorted(os.listdir(state_dir)):
                if name.endswith(_SUFFIX) and _ID.fullmatch(name[:-len(_SUFFIX)]):
                    self._known_on_disk(name[:-len(_SUFFIX)])

    # -- facts -------------------------------------------------------------------------------------
    def _path(self, session_id: str) -> str | None:
        return None if self.state_dir is None else os.path.join(self.state_dir, session_id + _SUFFIX)

    def _known_on_disk(self, session_id: str) -> SessionEntry | None:
        path = self._path(session_id)
        if path is None or not os.path.exists(path):
            return None
        try:
            header, _ = _read_state(path)
            entry = SessionEntry(session_id, header["kind"], header["options"], saved_n_past=header.get("n_past"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.entries[session_id] = entry
        return entry

    @property
    def in_memory(self) -> int:
        return sum(1 for e in self.entries.values() if e.session is not None)

    @property
    def memory_in_use(self) -> int:
        return sum(e.bytes for e in self.entries.values() if e.session is not None)

    def describe(self, entry: SessionEntry) -> dict[str, Any]:
        s = entry.session
        return {"id": entry.id, "object": "session", "kind": entry.kind, "in_memory": s is not None,
                "busy": entry.lock.locked(), "n_past": s.n_past if s is not None else entry.saved_n_past,
                "saved_n_past": entry.saved_n_past, **entry.options}

    # -- use ---------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def use(self, session_id: str, kind: str, options: dict[str, Any]) -> AsyncIterator[SessionEntry]:
        """Holds the session `session_id` for one request (others on it wait their turn): from
        memory, from disk, or new with `options` (mode, n_sink, window)."""
        entry = self.entries.get(session_id) or self._known_on_disk(session_id)
        if entry is None:
            entry = self.entries[session_id] = SessionEntry(session_id, kind, dict(options))
        if entry.kind != kind:
            raise bad_request(f"session {session_id!r} is a {entry.kind} session; it cannot serve a "
                              f"{'chat completion' if kind == 'chat' else 'completion'}", param="session_id")
        async with entry.lock:
            entry.last_used = time.monotonic()
            self.entries.setdefault(session_id, entry)  # deleted while this request waited: a new stream
            if self.shared and entry.session is not None and self._stamp(entry.id) != entry.stamp:
                entry.session, entry.bytes = None, 0  # another server moved it on: read its save
            if entry.session is None:
                await self._bring_in(entry)
            try:
                yield entry
            finally:
                entry.last_used = time.monotonic()
                entry.dirty = True
                if self.shared:
                    await asyncio.shield(self._save(entry))
                else:
                    self._save_soon(entry)

    def _stamp(self, session_id: str) -> tuple[int, int] | None:
        path = self._path(session_id)
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            return None
        return None if st is None else (st.st_mtime_ns, st.st_size)

    def _session_bytes(self, options: dict[str, Any]) -> int:
        return self.model.session_bytes(options["mode"], options["n_sink"], options["window"], n_threads=self.n_threads,
                                        kv_type=options.get("kv_type", "f16"))  # states saved before kv_type: f16

    async def _bring_in(self, entry: SessionEntry) -> None:
        need = self._session_bytes(entry.options)
        await self._make_room(need, entry)
        path = self._path(entry.id)

        def make() -> Any:
            session = self.model.session(entry.options["mode"], entry.options["n_sink"], entry.options["window"],
                                         kv_type=entry.options.get("kv_type", "f16"), n_threads=self.n_threads)
            if self.prepare is not None:
                session = self.prepare(session)
            if path is not None and os.path.exists(path):
                entry.stamp = self._stamp(entry.id)
                header, blob = _read_state(path)
                session.load(blob)
                entry.saved_n_past = header.get("n_past")
                self.metrics.count("sessions_restored")
            return session

        try:
            entry.session = await asyncio.to_thread(make)
        except ValueError as e:
            raise APIError(500, f"session {entry.id!r} could not be restored: {e}", type="server_error") from None
        entry.bytes = need

    async def _make_room(self, need: int, keep: SessionEntry) -> None:
        def over() -> bool:
            return self.in_memory + 1 > self.max_sessions or (
                self.memory_budget is not None and self.memory_in_use + need > self.memory_budget)

        if self.memory_budget is not None and need > self.memory_budget:
            raise too_many(f"one session needs {need} bytes, more than the memory budget {self.memory_budget}")
        while over():
            idle = [e for e in self.entries.values()
                    if e.session is not None and e is not keep and not e.lock.locked()]
            if not idle:
                raise too_many(f"all {self.in_memory} sessions in memory are busy (max_sessions "
                               f"{self.max_sessions}, memory budget {self.memory_budget}); retry later")
            victim = min(idle, key=lambda e: e.last_used)
            async with victim.lock:
                if victim.session is None:
                    continue
                if self.state_dir is not None:
                    await self._save(victim)
                victim.session = None
                victim.bytes = 0
                if self.state_dir is None:
                    del self.entries[victim.id]  # nowhere to keep it: forgotten
            self.metrics.count("sessions_evicted")

    # -- saving ------------------------------------------------------------------------------------
    async def _save(self, entry: SessionEntry) -> None:
        """Writes the entry's state (its lock held by the caller)."""
        path = self._path(entry.id)
        if path is None or entry.session is None or not entry.dirty:
            return
        session = entry.session
        header = {"id": entry.id, "kind": entry.kind, "options": entry.options, "n_past": session.n_past,
                  "model": os.path.basename(self.model.path)}

        def write() -> None:
            _write_state(path, header, session.save())

        await asyncio.to_thread(write)
        entry.stamp = self._stamp(entry.id)
        entry.dirty = False
        entry.saved_n_past = header["n_past"]
        self.metrics.count("sessions_saved")

    def _save_soon(self, entry: SessionEntry) -> None:
        if self.state_dir is None:
            return

        async def save() -> None:
            async with entry.lock:
                await self._save(entry)

        task = asyncio.get_running_loop().create_task(save())
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    async def delete(self, session_id: str) -> bool:
        """Forgets a session: from memory and its saved state (after a request running on it)."""
        entry = self.entries.get(session_id) or self._known_on_disk(session_id)
        if entry is None:
            return False
        async with entry.lock:
            entry.session, entry.bytes, entry.dirty = None, 0, False
            self.entries.pop(session_id, None)
            path = self._path(session_id)
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        return True

    async def save_all(self) -> None:
        """Saves every changed session (shutdown)."""
        if self._saves:
            await asyncio.gather(*list(self._saves), return_exceptions=True)
        for entry in list(self.entries.values()):
            async with entry.lock:
                await self._save(entry)
