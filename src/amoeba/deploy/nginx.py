"""``nginx.conf``: nginx in front of the public listeners of a topology run on
one host (``amoeba run`` or the systemd units).

Runs as any user: ``nginx -p DIR -c nginx.conf`` keeps its pid file, logs
and temporary files under DIR.  Per public listener an ``upstream`` with one
``server`` per replica, ``least_conn``, passive health checks (a replica that
fails ``max_fails`` times rests ``fail_timeout``) and keep-alive connections.

Retries: ``proxy_next_upstream error timeout http_502 http_503`` hands a
failed attempt to the next replica.  nginx itself never passes a request
with a non-idempotent method (POST, LOCK, PATCH) to another server once it
was sent to one (``non_idempotent`` is deliberately absent), so a POST is
retried only when its connection could not be made - it never ran twice.
A replica that is draining answers ``/readyz`` and new requests' connection
attempts with refusal or 503, which is why 503 is in the list.
"""

from __future__ import annotations

from amoeba.deploy.plan import EdgeRoute, Plan, edge_port_conflict, edge_warnings, route_regex

__all__ = ["render"]

_PROXY = """\
            proxy_pass http://{upstream};
            include proxy_params.conf;
"""


def _location(route: EdgeRoute) -> str:
    if route.mount:  # a mounted app: the prefix itself and everything below it
        return "".join(f"        location {m} {{\n{_PROXY.format(upstream=route.upstream)}        }}\n"
                       for m in (f"= {route.path}", f"^~ {route.below}"))
    path = route.path
    match = f"= {path}" if "{" not in path else f"~ {route_regex(path)}"
    return f"        location {match} {{\n{_PROXY.format(upstream=route.upstream)}        }}\n"


def warnings(plan: Plan) -> str:
    """``edge_warnings`` as comment lines at the top of a generated edge file."""
    return "".join(f"# WARNING: {w}\n" for w in edge_warnings(plan))


def render(plan: Plan) -> dict[str, str]:
    if not plan.upstreams:
        raise ValueError(f"{plan.source}: no process has a public listener: nothing for nginx to "
                         f"front; fix: add `public: true` to a listener")
    edge_port_conflict(plan, "nginx")
    tries = max(2, *(len(u.servers) for u in plan.upstreams))
    ups = []
    for u in plan.upstreams:
        servers = "".join(f"        server {h}:{p} max_fails=2 fail_timeout=5s;\n"
                          for h, p in u.servers)
        ups.append(f"    upstream {u.name} {{\n        least_conn;\n{servers}"
                   f"        keepalive 32;\n    }}\n")
    routes = "".join(_location(r) for r in plan.routes)
    server_name = plan.deploy.edge_host or "_"
    head = plan.header("nginx") + warnings(plan)
    conf = f"""{head}# Run: nginx -p DIR -c nginx.conf   (DIR: the directory of this file)
pid nginx.pid;
error_log error.log warn;
worker_processes auto;

events {{
    worker_connections 1024;
}}

http {{
    access_log access.log;
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    server_tokens off;

    # The gateway's body limit (settings.max_body): refused here before it travels.
    client_max_body_size {plan.settings.max_body};

    # Keep the client's request id when it sent one, else nginx's own.
    map $http_x_request_id $amoeba_request_id {{
        default $http_x_request_id;
        "" $request_id;
    }}
    map $http_upgrade $amoeba_connection {{
        default upgrade;
        "" "";
    }}

{"".join(ups)}
    server {{
        listen {plan.deploy.edge_port};
        server_name {server_name};

        # Internal endpoints never leave the host through the edge (the dashboard
        # answers /_amoeba as well as /_amoeba/).
        location = /metrics {{
            deny all;
        }}
        location = /_amoeba {{
            deny all;
        }}
        location ^~ /_amoeba/ {{
            deny all;
        }}
{routes}        location / {{
{_PROXY.format(upstream=plan.upstreams[0].name)}        }}
    }}
}}
"""
    params = f"""{plan.header("nginx")}proxy_http_version 1.1;
proxy_set_header Connection $amoeba_connection;
proxy_set_header Upgrade $http_upgrade;
proxy_set_header Host $host;
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header X-Forwarded-Host $host;
proxy_set_header X-Request-Id $amoeba_request_id;
proxy_connect_timeout {plan.connect_timeout_ms}ms;
proxy_send_timeout {plan.read_timeout}s;
proxy_read_timeout {plan.read_timeout}s;
# Next replica on failure; POST/PATCH/LOCK only when they were never sent (see nginx.py).
proxy_next_upstream error timeout http_502 http_503;
proxy_next_upstream_tries {tries};
proxy_next_upstream_timeout {plan.read_timeout}s;
"""
    return {"nginx.conf": conf, "proxy_params.conf": params}
