"""Apps served by ``tests/e2e/test_load_faults.py``: load and faults under real servers (issue 12).

Each module builds one app at import, from the environment the test sets (see
``_common``): the run's key (``LOAD_PUBLIC_KEY``) or a JWKS URL
(``LOAD_JWKS_URL``), ``LOAD_AUDIENCE``, and where the audit events go
(``LOAD_SINK``: ``jsonl`` to ``AUDIT_LOG``, or ``sql`` to ``LOAD_SQL_URL``).
Every path answers 200 with the subject the middleware verified, so the test
knows what to expect of each kind of request from the middleware alone.
"""
