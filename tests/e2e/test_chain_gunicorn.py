"""A chained JSON-lines trail under gunicorn: two forked workers, rotation, SIGTERM.

The app is loaded once in gunicorn's master (``--preload``) and its handler is
forked into both workers: each worker must become a stream of its own, the
streams must survive the file's rotation by either worker, and SIGTERM must
close both (their closing records written at worker exit), so that
``jwt-audit verify-log`` finds the trail intact with every stream closed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from processes import free_port, stop_process, wait_serving

from jwt_audit_middleware.cli import main
from jwt_audit_middleware.testing import SigningKey

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs fork()"),
]

BIN = Path(sys.executable).parent

APP = textwrap.dedent(
    """
    import logging, os
    from jwt_audit_middleware import JWTAuditWSGIMiddleware
    from jwt_audit_middleware.sinks import JSONLinesHandler

    handler = JSONLinesHandler(
        os.environ["AUDIT_LOG"], chain=True, max_bytes=200_000, backup_count=0, batch_size=50
    )
    logging.getLogger("jwt_audit").addHandler(handler)

    def hello(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    secret = bytes.fromhex(os.environ["SECRET"])
    app = JWTAuditWSGIMiddleware(hello, algorithms=["HS256"], secret=secret)
    """
)


def test_two_gunicorn_workers_leave_two_closed_streams_through_rotation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "chained_app.py").write_text(APP)
    log = tmp_path / "audit.jsonl"
    key = SigningKey.generate("HS256", kid="e2e")
    port = free_port()
    output = tmp_path / "gunicorn.log"
    environment = {
        **os.environ,
        "AUDIT_LOG": str(log),
        "SECRET": key.options()["secret"].hex(),
        "PYTHONPATH": str(tmp_path),
    }
    with output.open("wb") as sink:
        server = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "chained_app:app",
                "--preload",
                "--workers",
                "2",
                "--threads",
                "4",
                "--bind",
                f"127.0.0.1:{port}",
            ],
            cwd=tmp_path,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_serving("gunicorn", base + "/", server, output, timeout=30)
        good = {"Authorization": "Bearer " + key.token(sub="alice")}

        # a connection a request, from 8 threads: both workers serve
        no_keep_alive = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=base, limits=no_keep_alive) as http:

            def one(n: int) -> int:
                return http.get(f"/orders/{n}", headers=good if n % 2 else {}).status_code

            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(one, range(1500)))
        assert set(statuses) == {200, 401}
    finally:
        assert stop_process(server) == 0, output.read_text(errors="replace")[-2000:]
    files = [str(p) for p in tmp_path.glob("audit.jsonl*") if not p.name.endswith(".lock")]
    assert len(files) > 3  # rotated along the way
    try:
        status = main(["verify-log", "--require-closed", "--file", *files])
    except SystemExit as exc:  # pragma: no cover - a usage error
        status = int(exc.code or 0)
    out = capsys.readouterr().out
    assert status == 0, out
    # wait_serving's request and the 1,500, plus the two workers' closing records
    assert "checked 1,503 records in 2 streams" in out
    assert out.count(", closed,") == 2
