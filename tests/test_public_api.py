import mitosis


def test_public_api_is_pinned():
    assert sorted(mitosis.__all__) == [
        "App", "BadRequest", "Cache", "Conflict", "Database", "DeadlineExceeded", "Forbidden",
        "Header", "Internal", "Invalid", "MethodNotAllowed", "NotFound", "PayloadTooLarge",
        "Principal", "Resource", "ResourceContext", "RuntimeInfo", "SQLite", "Service",
        "ServiceError", "Tokens", "TooManyRequests", "Unauthorized", "Unavailable",
        "UnsupportedMediaType", "delete", "get", "idempotent", "patch", "post", "put",
    ]
    for name in mitosis.__all__:
        assert getattr(mitosis, name) is not None


def test_error_statuses():
    assert [mitosis.Invalid.status, mitosis.NotFound.status, mitosis.Conflict.status,
            mitosis.Unauthorized.status, mitosis.Forbidden.status,
            mitosis.Unavailable.status] == [422, 404, 409, 401, 403, 503]
