"""A throwaway PostgreSQL cluster for tests: ``python tests/pg_cluster.py start DIR`` prints its URL,
``python tests/pg_cluster.py stop DIR`` ends it. It listens on 127.0.0.1 only (no Unix socket outside
DIR), trusts local connections and lives in DIR; as root it runs as the ``postgres`` user."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["find_bin", "start", "stop"]


def find_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps them out of PATH), or None."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    found = debian[-1] if debian else shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _as_server(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: str | os.PathLike) -> str:
    """Initialise and start a cluster in ``folder``; returns the SQLAlchemy URL of its database."""
    bin_ = find_bin()
    if bin_ is None:
        raise FileNotFoundError("no PostgreSQL server programs (pg_ctl) found")
    folder = Path(folder).resolve()
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()

    def run(cmd: list[str]) -> None:
        done = subprocess.run(_as_server(cmd), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")

    run([str(bin_ / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    run([str(bin_ / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-o",
         f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off", "start"])
    run([str(bin_ / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "dualtensor"])
    (folder / "url").write_text(f"postgresql+psycopg://postgres@127.0.0.1:{port}/dualtensor\n")
    return (folder / "url").read_text().strip()


def stop(folder: str | os.PathLike) -> None:
    bin_ = find_bin()
    subprocess.run(_as_server([str(bin_ / "pg_ctl"), "-D", str(Path(folder).resolve() / "data"), "-m", "fast",
                               "-w", "stop"]), check=False, capture_output=True)


if __name__ == "__main__":
    what, where = sys.argv[1], sys.argv[2]
    if what == "start":
        print(start(where))
    else:
        stop(where)
