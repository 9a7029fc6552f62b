"""Apps served by ``tests/e2e/test_mounts.py``: path rules under mounts and root paths (issue 11).

Each module builds one app at import, from the environment the test sets:
``MOUNT_PUBLIC_KEY`` (the run's RS256 public key), ``MOUNT_AUDIENCE`` and
``AUDIT_LOG`` (the JSON-lines file the audit events go to).  Every view
answers JSON saying which path it routed on, so a test can prove its setup.
"""
