"""The server engine: PostgreSQL + pgvector behind the vector-store interface of `luban.kb.vectors`.

A knowledge base built with `--engine pgvector` keeps its chunks and BM25 index in its folder and its vectors in
table kb_<id> (id bigint, embedding vector(dim), HNSW index on the inner product) of
- the server `--dsn postgresql://...` names (a team's shared PostgreSQL with the vector extension), or
- a local server started on demand by the `pgserver` wheel (PostgreSQL + pgvector bundled, no install) with its
  data in $LUBAN_PGDATA (default ~/.cache/luban/pgdata); it stops when the last process using it exits.
Every add / remove runs in one transaction, committed just before the knowledge base switches to its new version.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from luban.errors import ConfigError, RunError

EF_SEARCH = 100


def data_dir() -> Path:
    return Path(os.environ.get("LUBAN_PGDATA") or Path.home() / ".cache" / "luban" / "pgdata")


_SERVERS: dict[str, object] = {}


def _local_uri(pgdata: Path) -> str:
    try:
        import pgserver
    except ImportError:
        raise ConfigError("engine pgvector without --dsn starts a local PostgreSQL from the pgserver wheel: "
                          "pip install 'luban[kb-server]'") from None
    key = str(pgdata)
    if key not in _SERVERS:
        pgdata.mkdir(parents=True, exist_ok=True)
        _SERVERS[key] = pgserver.get_server(pgdata, cleanup_mode="stop")
    return _SERVERS[key].get_uri()


def connect(dsn: str | None, pgdata: str | None = None):
    import psycopg
    from pgvector.psycopg import register_vector

    uri = dsn or _local_uri(Path(pgdata) if pgdata else data_dir())
    try:
        conn = psycopg.connect(uri, autocommit=True)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.autocommit = False
    except psycopg.Error as e:
        raise ConfigError(f"pgvector: cannot use the PostgreSQL server {uri.split('@')[-1]}: "
                          f"{str(e).strip().splitlines()[0]}") from None
    register_vector(conn)
    return conn


class PgVectorStore:
    engine = "pgvector"

    def __init__(self, conn, table: str, dim: int):
        self.conn, self.table, self.dim = conn, table, dim

    @classmethod
    def create(cls, meta: dict, folder: Path | None = None) -> PgVectorStore:
        meta.setdefault("pgdata", None if meta.get("dsn") else str(data_dir()))
        store = cls(connect(meta.get("dsn"), meta.get("pgdata")), f"kb_{meta['id']}", int(meta["embedder"]["dim"]))
        store.conn.execute(f"DROP TABLE IF EXISTS {store.table}")
        store.conn.execute(f"CREATE TABLE {store.table} (id bigint PRIMARY KEY, embedding vector({store.dim}))")
        return store

    @classmethod
    def open(cls, meta: dict, folder: Path | None = None) -> PgVectorStore:
        store = cls(connect(meta.get("dsn"), meta.get("pgdata")), f"kb_{meta['id']}", int(meta["embedder"]["dim"]))
        row = store.conn.execute("SELECT to_regclass(%s)", (store.table,)).fetchone()
        if row[0] is None:
            raise RunError(f"{folder}: its vectors (table {store.table}) are not in the PostgreSQL server")
        store.conn.commit()
        return store

    def __len__(self) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def add(self, ids, vectors: np.ndarray, threads: int = 0) -> None:
        vectors = np.asarray(vectors, np.float32)
        with self.conn.cursor() as cur:
            with cur.copy(f"COPY {self.table} (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "vector"])
                for i, v in zip(np.asarray(ids, np.int64).tolist(), vectors):
                    copy.write_row((i, v))

    def remove(self, ids) -> None:
        self.conn.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (list(map(int, ids)),))

    def commit(self) -> None:
        """Build the HNSW index (once, after the first load: faster than growing it row by row) and commit."""
        self.conn.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} "
                          "USING hnsw (embedding vector_ip_ops)")
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(q, np.float32).reshape(-1)
        self.conn.execute(f"SET hnsw.ef_search = {max(EF_SEARCH, k)}")
        rows = self.conn.execute(f"SELECT id, -(embedding <#> %s) FROM {self.table} ORDER BY embedding <#> %s "
                                 "LIMIT %s", (q, q, k)).fetchall()
        self.conn.commit()
        return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.float32)

    def table_mb(self) -> float:
        n = self.conn.execute("SELECT pg_total_relation_size(%s)", (self.table,)).fetchone()[0]
        return n / 2**20

    def drop(self) -> None:
        self.conn.rollback()
        self.conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()
