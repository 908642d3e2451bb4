"""The previous release, from tests/upgrade/v0.1.0.tar.gz: its CLI, API and worker as processes.

Its Python packages are `api` and `jobs` (its CLI is `python -m api.cli`); this release's are
api, core, jobs and cli. Its processes run with this venv's interpreter (the dependencies are
the same), the extracted folder first on PYTHONPATH and as the working directory of one-shot
commands. `python -P` keeps the working directory off sys.path: the long-running processes
are started by tests/support/processes.py from the repository's root, whose `api` and `jobs`
would otherwise shadow the snapshot's. `check_shadowing` proves which code runs.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from tests.support.processes import HOST, Server, Worker, free_port, service_environment

ARCHIVE = Path(__file__).resolve().parent / "v0.1.0.tar.gz"
VERSION = "v0.1.0"
PYTHON = [sys.executable, "-P"]


class PreviousRelease:
    """The previous release, extracted into folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def extract(cls, folder: Path, archive: Path = ARCHIVE) -> PreviousRelease:
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        release = cls(folder)
        release.check_shadowing()
        return release

    @property
    def migration_ids(self) -> list[str]:
        return sorted(
            path.stem for path in (self.folder / "migrations").glob("*.*") if path.suffix in {".sql", ".py"}
        )

    def environment(self, database_url: str, **settings: str) -> dict[str, str]:
        environment = service_environment(database_url, **settings)
        environment.update(PYTHONPATH=str(self.folder), PYTHONDONTWRITEBYTECODE="1")
        return environment

    def run(self, *arguments: str, database_url: str, **settings: str) -> subprocess.CompletedProcess[str]:
        """`python -m api.cli ARGUMENTS` of the previous release, to completion."""
        return subprocess.run(
            [*PYTHON, "-m", "api.cli", *arguments],
            cwd=self.folder,
            env=self.environment(database_url, **settings),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def migrate(self, database_url: str) -> list[str]:
        """Its `migrate`; returns the ids it applied."""
        result = self.run("migrate", database_url=database_url)
        assert result.returncode == 0, f"{VERSION} migrate failed:\n{result.stdout}\n{result.stderr}"
        applied = result.stdout.split("migrations applied: ", 1)[1].split(";", 1)[0]
        return [] if applied.startswith("none") else applied.split(", ")

    def token(self, secret: str, *, scopes: str, sub: str = "upgrade-tests") -> str:
        """A token minted by its `token` command."""
        result = self.run("token", "--sub", sub, "--scope", scopes, database_url="", WALLET_JWT_SECRET=secret)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def serve(self, database_url: str, *, log_path: Path, **settings: str) -> Server:
        """Its `serve` on a free port (not started)."""
        port = free_port()
        return Server(
            [*PYTHON, "-m", "api.cli", "serve", "--host", HOST, "--port", str(port)],
            self.environment(database_url, **settings),
            port=port,
            name=f"{VERSION} serve",
            log_path=log_path,
        )

    def worker(self, database_url: str, *, watch_url: str, log_path: Path, **settings: str) -> Worker:
        """Its `worker` (not started); watch_url: where its registration is looked for."""
        return Worker(
            [*PYTHON, "-m", "api.cli", "worker"],
            self.environment(database_url, **settings),
            watch_url=watch_url,
            name=f"{VERSION} worker",
            log_path=log_path,
        )

    def check_shadowing(self) -> None:
        """Its api and jobs packages are what its processes import, from the repository's root
        too (where the long-running ones start), and this release's core and cli are not in it."""
        probe = "import api, api.cli, jobs; print(api.__file__); print(jobs.__file__)"
        for cwd in (self.folder, Path(__file__).resolve().parents[2]):
            result = subprocess.run(
                [*PYTHON, "-c", probe],
                cwd=cwd,
                env=self.environment(""),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            for module_file in result.stdout.split():
                assert Path(module_file).is_relative_to(self.folder), (cwd, module_file)
        assert not (self.folder / "core").exists() and not (self.folder / "cli").exists()
