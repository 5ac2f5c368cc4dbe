import amoeba


def test_public_api_is_pinned():
    assert sorted(amoeba.__all__) == [
        "App", "BadRequest", "Body", "Cache", "Conflict", "Counter", "Database", "DeadlineExceeded",
        "Forbidden", "Gauge", "Header", "Histogram", "Internal", "Invalid", "MethodNotAllowed", "Mount",
        "NotFound", "PayloadTooLarge",
        "Principal", "Resource", "ResourceContext", "RuntimeInfo", "SQLite", "Service",
        "ServiceError", "Tokens", "TooManyRequests", "Unauthorized", "Unavailable",
        "UnsupportedMediaType", "delete", "get", "idempotent", "patch", "post", "provide", "put",
    ]
    for name in amoeba.__all__:
        assert getattr(amoeba, name) is not None


def test_error_statuses():
    assert [amoeba.Invalid.status, amoeba.NotFound.status, amoeba.Conflict.status,
            amoeba.Unauthorized.status, amoeba.Forbidden.status,
            amoeba.Unavailable.status] == [422, 404, 409, 401, 403, 503]
