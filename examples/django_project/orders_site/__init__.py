"""The example Django project: an orders API behind jwt_audit_middleware."""
