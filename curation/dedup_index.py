"""Persistent index of accepted rows, so a later dedup run drops rows that duplicate earlier runs.

Two backends, one interface (:class:`DedupIndex`):

* :class:`FolderIndex` (``index: path/to/folder``): append-only parts of ``.npy`` arrays (MinHash
  signatures, exact-text hashes) + a parquet file of ids, listed in ``meta.json``. No pickle
  anywhere; ``np.load(allow_pickle=False)``. Several workers may commit to one folder (a lock file
  serialises commits); each run reads the parts committed before it started.
* :class:`RedisIndex` (``index: redis://host:port/db``): datasketch's :class:`~datasketch.MinHashLSH`
  on Redis storage (``prepickle=False``: keys are the row ids as bytes, nothing is unpickled), plus
  Redis hashes for exact-text hashes and signatures. Shared by any number of workers.

Every entry has a sequence number: when a new row duplicates several earlier entries, the
earliest accepted one is named in ``duplicate_of``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import SftflowError
from curation.io import atomic_path, read_json, write_json
from curation.minhash import band_keys

INDEX_VERSION = 1
#: per row and band, at most this many earlier entries of one bucket are compared (the earliest)
MAX_BUCKET_MATCHES = 64


class IndexMismatchError(SftflowError, ValueError):
    """The index was built with settings that make its signatures incomparable with this run's."""


@dataclass
class IndexMatches:
    """Earlier entries that rows of this run match: parallel arrays, one element per (row, entry)."""

    row: np.ndarray  # int64 positions in the query arrays
    entry_id: list[str]
    entry_seq: np.ndarray  # int64, lower = accepted earlier
    entry_sig: np.ndarray | None  # uint32 [n, num_perm] (near matches only)


def _empty_matches(num_perm: int | None) -> IndexMatches:
    sig = None if num_perm is None else np.empty((0, num_perm), dtype=np.uint32)
    return IndexMatches(np.empty(0, np.int64), [], np.empty(0, np.int64), sig)


class DedupIndex:
    """What the dedup stage needs from an index of earlier accepted rows."""

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Raise :class:`IndexMismatchError` when ``settings`` differ from those the index was built with."""
        raise NotImplementedError

    def exact_matches(self, exact_keys: np.ndarray) -> IndexMatches:
        """Earlier entries whose exact-text hash equals one of ``exact_keys`` (uint64)."""
        raise NotImplementedError

    def near_matches(self, signatures: np.ndarray, bands: int, rows: int) -> IndexMatches:
        """Earlier entries sharing at least one LSH band with a signature (candidates, unverified)."""
        raise NotImplementedError

    def add(
        self, ids: list[str], exact_keys: np.ndarray, signatures: np.ndarray, near_ok: np.ndarray
    ) -> None:
        """Record accepted rows (made durable by :meth:`commit`)."""
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


def open_index(
    spec: str, settings: dict[str, Any], bands: int, rows: int, run_tag: str | None = None
) -> DedupIndex:
    """A folder path or ``redis://host:port/db[?basename=name]``.

    ``run_tag`` names this run: entries an earlier attempt of the *same* run committed (it crashed
    after committing, before its stage was published) are not "earlier runs' rows" for it, and its
    commit is not repeated. A new run on the same data has another tag and meets them as usual.
    """
    if spec.startswith("redis://"):
        index: DedupIndex = RedisIndex(spec, settings, bands, rows, run_tag=run_tag)
    else:
        index = FolderIndex(spec, run_tag=run_tag)
    index.check_settings(settings)
    return index


def _check(found: dict[str, Any], settings: dict[str, Any], where: str) -> None:
    diff = {k: (found.get(k), v) for k, v in settings.items() if found.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: index has {a!r}, this run {b!r}" for k, (a, b) in sorted(diff.items()))
        raise IndexMismatchError(
            f"dedup index {where} was built with other settings ({detail}); its signatures cannot be "
            f"compared with this run's: use a new index or the same settings"
        )


# --------------------------------------------------------------------------------------------------
# folder backend


class FolderIndex(DedupIndex):
    """Append-only parts in a folder; see the module docstring."""

    def __init__(self, path: str | os.PathLike, run_tag: str | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        meta_path = self.path / "meta.json"
        self.meta: dict[str, Any] = read_json(meta_path) if meta_path.exists() else {}
        self._pending: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = []
        self.run_tag = run_tag
        all_parts = self.meta.get("parts", [])
        # parts this run committed in an earlier, crashed attempt: not earlier runs' rows
        parts = [p for p in all_parts if run_tag is None or p.get("tag") != run_tag]
        ids: list[str] = []
        exact, sigs, near_ok, seqs = [], [], [], []
        for part in parts:
            base = self.path / part["name"]
            ids.extend(pq.read_table(f"{base}.ids.parquet").column("id").to_pylist())
            exact.append(np.load(f"{base}.exact.npy", allow_pickle=False))
            sigs.append(np.load(f"{base}.sig.npy", allow_pickle=False))
            near_ok.append(np.load(f"{base}.near.npy", allow_pickle=False))
            seqs.append(np.arange(part["first_seq"], part["first_seq"] + part["rows"], dtype=np.int64))
        self.ids = ids
        self.exact = np.concatenate(exact) if exact else np.empty(0, np.uint64)
        self.sigs = np.concatenate(sigs) if sigs else None
        self.near_ok = np.concatenate(near_ok) if near_ok else np.empty(0, bool)
        self.seq = np.concatenate(seqs) if seqs else np.empty(0, np.int64)
        self._exact_order = np.argsort(self.exact, kind="stable")
        self._spool: Any = None
        self._num_perm = 0
        self._band_cache: tuple[int, int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def check_settings(self, settings: dict[str, Any]) -> None:
        if "settings" in self.meta:
            _check(self.meta["settings"], settings, str(self.path))
        self.settings = settings

    def exact_matches(self, exact_keys: np.ndarray) -> IndexMatches:
        if len(self.exact) == 0:
            return _empty_matches(None)
        sorted_keys = self.exact[self._exact_order]
        lo = np.searchsorted(sorted_keys, exact_keys, side="left")
        hi = np.searchsorted(sorted_keys, exact_keys, side="right")
        rows = np.flatnonzero(hi > lo)
        # an exact key can sit in the index once per run that accepted it: take the earliest
        entries = self._exact_order[lo[rows]]
        return IndexMatches(rows.astype(np.int64), [self.ids[e] for e in entries], self.seq[entries], None)

    def near_matches(self, signatures: np.ndarray, bands: int, rows: int) -> IndexMatches:
        num_perm = signatures.shape[1]
        if self.sigs is None or not self.near_ok.any():
            return _empty_matches(num_perm)
        if self._band_cache is None or self._band_cache[:2] != (bands, rows):
            self._band_cache = (bands, rows, band_keys(self.sigs, bands, rows))
        old_keys = self._band_cache[2]
        valid = np.flatnonzero(self.near_ok)
        new_keys = band_keys(signatures, bands, rows)
        pairs_row, pairs_entry = [], []
        for band in range(bands):
            order = valid[np.argsort(old_keys[valid, band], kind="stable")]
            sorted_keys = old_keys[order, band]
            lo = np.searchsorted(sorted_keys, new_keys[:, band], side="left")
            hi = np.searchsorted(sorted_keys, new_keys[:, band], side="right")
            # a bucket shared by very many earlier rows (templated data) yields its earliest ones only
            counts = np.minimum(hi - lo, MAX_BUCKET_MATCHES)
            hit = np.flatnonzero(counts)
            if len(hit) == 0:
                continue
            r = np.repeat(hit, counts[hit])
            starts = np.repeat(lo[hit], counts[hit])
            within = np.arange(len(r)) - np.repeat(np.cumsum(counts[hit]) - counts[hit], counts[hit])
            pairs_row.append(r)
            pairs_entry.append(order[starts + within])
        if not pairs_row:
            return _empty_matches(num_perm)
        pair = np.unique(np.stack([np.concatenate(pairs_row), np.concatenate(pairs_entry)], axis=1), axis=0)
        entries = pair[:, 1]
        return IndexMatches(
            pair[:, 0].astype(np.int64),
            [self.ids[e] for e in entries],
            self.seq[entries],
            self.sigs[entries],
        )

    def add(
        self, ids: list[str], exact_keys: np.ndarray, signatures: np.ndarray, near_ok: np.ndarray
    ) -> None:
        if not ids:
            return
        # signatures go to a spool file at once, so pending rows cost no memory until commit
        if self._spool is None:
            self._spool = tempfile.NamedTemporaryFile(dir=self.path, prefix=".spool-", suffix=".tmp")
        self._spool.write(np.ascontiguousarray(signatures, dtype=np.uint32).tobytes())
        self._pending.append((list(ids), exact_keys.astype(np.uint64), np.empty(0), near_ok))
        self._num_perm = signatures.shape[1]

    @contextlib.contextmanager
    def _lock(self):
        with open(self.path / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def commit(self) -> None:
        """Write pending rows as a new part; ``meta.json`` (written last, atomically) lists it."""
        if not self._pending:
            return
        ids = [i for p in self._pending for i in p[0]]
        exact = np.concatenate([p[1] for p in self._pending])
        near_ok = np.concatenate([p[3] for p in self._pending]).astype(bool)
        with self._lock():
            meta_path = self.path / "meta.json"
            meta = read_json(meta_path) if meta_path.exists() else {"version": INDEX_VERSION, "parts": []}
            meta.setdefault("settings", self.settings)
            _check(meta["settings"], self.settings, str(self.path))
            parts = meta["parts"]
            if self.run_tag is not None and any(p.get("tag") == self.run_tag for p in parts):
                # an earlier attempt of this very run committed the same rows: committing is idempotent
                self._pending.clear()
                self._spool.close()
                self._spool = None
                return
            first_seq = parts[-1]["first_seq"] + parts[-1]["rows"] if parts else 0
            name = f"part-{len(parts):05d}"
            base = self.path / name
            for suffix, arr in ((".exact.npy", exact), (".near.npy", near_ok)):
                with atomic_path(f"{base}{suffix}") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
            # signatures: copied from the spool file into the .npy a slice at a time
            self._spool.flush()
            spooled = np.memmap(self._spool.name, dtype=np.uint32, mode="r", shape=(len(ids), self._num_perm))
            with atomic_path(f"{base}.sig.npy") as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint32, shape=spooled.shape)
                for lo in range(0, len(ids), 65536):
                    out[lo : lo + 65536] = spooled[lo : lo + 65536]
                out.flush()
                del out
            del spooled
            with atomic_path(f"{base}.ids.parquet") as tmp:
                pq.write_table(pa.table({"id": pa.array(ids, pa.string())}), tmp)
            parts.append({"name": name, "rows": len(ids), "first_seq": first_seq, "tag": self.run_tag})
            write_json(meta_path, meta)
        self._pending.clear()
        self._spool.close()  # deletes the spool file
        self._spool = None


# --------------------------------------------------------------------------------------------------
# redis backend


class RedisIndex(DedupIndex):
    """datasketch ``MinHashLSH`` on Redis + hashes for exact keys and signatures; see module docstring."""

    def __init__(self, url: str, settings: dict[str, Any], bands: int, rows: int, run_tag: str | None = None):
        try:
            import redis
            from datasketch import MinHashLSH
        except ImportError as err:  # pragma: no cover - redis is a dev/optional dependency
            raise RuntimeError(f"index {url!r} needs the 'redis' package: pip install redis") from err
        u = urlparse(url)
        db = int(u.path.strip("/") or 0)
        self.basename = parse_qs(u.query).get("basename", ["sftflow-dedup"])[0]
        conn = {"host": u.hostname or "127.0.0.1", "port": u.port or 6379, "db": db}
        self.url = url
        self.r = redis.Redis(**conn)
        try:
            self.r.ping()
        except redis.exceptions.ConnectionError as err:
            raise RuntimeError(f"dedup index {url}: cannot reach Redis ({err})") from err
        self.bands, self.rows = bands, rows
        self.num_perm = settings["num_perm"]
        self.seed = settings["seed"]
        # (bands, rows) fix the LSH tables, so they are part of the Redis index's identity
        self.settings = dict(settings, bands=bands, rows=rows)
        self.lsh = MinHashLSH(
            num_perm=self.num_perm,
            params=(bands, rows),
            storage_config={"type": "redis", "basename": self.basename.encode(), "redis": conn},
            prepickle=False,
        )
        self._k_meta = f"{self.basename}:sftflow:meta"
        self._k_exact = f"{self.basename}:sftflow:exact"
        self._k_sig = f"{self.basename}:sftflow:sig"
        self._k_seq = f"{self.basename}:sftflow:seq"
        self._k_tag = f"{self.basename}:sftflow:tag"  # entry id -> tag of the run that committed it
        self._k_tags = f"{self.basename}:sftflow:tags"  # tags whose commit completed
        self.run_tag = run_tag
        self._pending: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return int(self.r.hlen(self._k_sig))

    def check_settings(self, settings: dict[str, Any]) -> None:
        mine = json.dumps(self.settings, sort_keys=True)
        # set-if-absent, so concurrent first runs agree on one settings record
        self.r.setnx(self._k_meta, mine)
        found = json.loads(self.r.get(self._k_meta))
        _check(found, self.settings, self.url)

    def exact_matches(self, exact_keys: np.ndarray) -> IndexMatches:
        if len(exact_keys) == 0:
            return _empty_matches(None)
        vals = self.r.hmget(self._k_exact, [k.tobytes() for k in exact_keys.astype(np.uint64)])
        rows = [i for i, v in enumerate(vals) if v is not None]
        entries = [json.loads(vals[i]) for i in rows]
        own = self._own([e["id"].encode() for e in entries])
        rows = [i for i, o in zip(rows, own, strict=True) if not o]
        entries = [e for e, o in zip(entries, own, strict=True) if not o]
        return IndexMatches(
            np.array(rows, dtype=np.int64),
            [e["id"] for e in entries],
            np.array([e["seq"] for e in entries], dtype=np.int64),
            None,
        )

    def near_matches(self, signatures: np.ndarray, bands: int, rows: int) -> IndexMatches:
        pair_row: list[int] = []
        pair_key: list[bytes] = []
        for i, keys in self._query(signatures.astype(np.uint32)):
            pair_row.extend([i] * len(keys))
            pair_key.extend(keys)
        if not pair_row:
            return _empty_matches(signatures.shape[1])
        unique = sorted(set(pair_key))
        found = dict(zip(unique, self.r.hmget(self._k_sig, unique), strict=True))
        own = dict(zip(unique, self._own(unique), strict=True))
        keep = [j for j, k in enumerate(pair_key) if found[k] is not None and not own[k]]
        if not keep:
            return _empty_matches(signatures.shape[1])
        sig = np.stack([np.frombuffer(found[pair_key[j]][8:], dtype=np.uint32) for j in keep])
        seq = np.array([int(np.frombuffer(found[pair_key[j]][:8], dtype=np.int64)[0]) for j in keep])
        return IndexMatches(
            np.array([pair_row[j] for j in keep], dtype=np.int64),
            [pair_key[j].decode() for j in keep],
            seq,
            sig.astype(np.uint32),
        )

    def _own(self, entry_ids: list[bytes]) -> list[bool]:
        """Which entries this run committed itself in an earlier, crashed attempt."""
        if self.run_tag is None or not entry_ids:
            return [False] * len(entry_ids)
        tags = self.r.hmget(self._k_tag, entry_ids)
        return [t is not None and t.decode() == self.run_tag for t in tags]

    def _query(self, signatures: np.ndarray, chunk: int = 2048):
        """(row, candidate keys) for each signature.

        ``MinHashLSH.query`` costs one Redis round trip per band per row; reading each band's
        buckets for a whole chunk of rows with the storage's pipelined ``getmany`` costs one per
        band per chunk. Both read the same buckets (``_H`` of the same band slice); the per-row
        ``query`` is the fallback if datasketch's internals change.
        """
        lsh = self.lsh
        tables = getattr(lsh, "hashtables", None)
        ranges = getattr(lsh, "hashranges", None)
        if tables is None or ranges is None or not all(hasattr(t, "getmany") for t in tables):
            from datasketch import LeanMinHash

            for i, sig in enumerate(signatures):
                yield i, lsh.query(LeanMinHash(seed=self.seed, hashvalues=sig, scheme="affine32"))
            return
        for lo in range(0, len(signatures), chunk):
            part = signatures[lo : lo + chunk]
            found: list[set[bytes]] = [set() for _ in range(len(part))]
            for (start, end), table in zip(ranges, tables, strict=True):
                buckets = table.getmany(*[lsh._H(sig[start:end]) for sig in part])
                for j, members in enumerate(buckets):
                    # Redis buckets are sets: a huge one is cut deterministically (smallest keys)
                    if len(members) > MAX_BUCKET_MATCHES:
                        members = sorted(members)[:MAX_BUCKET_MATCHES]
                    found[j].update(members)
            for j, keys in enumerate(found):
                if keys:
                    yield lo + j, sorted(keys)

    def add(
        self, ids: list[str], exact_keys: np.ndarray, signatures: np.ndarray, near_ok: np.ndarray
    ) -> None:
        if ids:
            self._pending.append(
                (list(ids), exact_keys.astype(np.uint64), np.asarray(signatures, dtype=np.uint32), near_ok)
            )

    def commit(self) -> None:
        from datasketch import LeanMinHash

        if self.run_tag is not None and self.r.sismember(self._k_tags, self.run_tag):
            self._pending.clear()  # an earlier attempt of this very run committed the same rows
            return
        for ids, exact, sigs, near_ok in self._pending:
            last = int(self.r.incrby(self._k_seq, len(ids)))
            first = last - len(ids)
            pipe = self.r.pipeline(transaction=False)
            for j, (row_id, key, sig) in enumerate(zip(ids, exact, sigs, strict=True)):
                seq = first + j
                # an exact key already accepted by another worker keeps its earlier owner
                pipe.hsetnx(self._k_exact, key.tobytes(), json.dumps({"id": row_id, "seq": seq}))
                pipe.hset(self._k_sig, row_id.encode(), np.int64(seq).tobytes() + sig.tobytes())
                if self.run_tag is not None:
                    pipe.hset(self._k_tag, row_id.encode(), self.run_tag)
            pipe.execute()
            with self.lsh.insertion_session() as session:
                for row_id, sig, ok in zip(ids, sigs, near_ok, strict=True):
                    if ok:
                        session.insert(
                            row_id.encode(),
                            LeanMinHash(seed=self.seed, hashvalues=sig, scheme="affine32"),
                            check_duplication=False,
                        )
        if self.run_tag is not None:
            self.r.sadd(self._k_tags, self.run_tag)  # last: the commit is complete
        self._pending.clear()
