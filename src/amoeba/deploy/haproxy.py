"""``haproxy.cfg``: HAProxy in front of the public listeners of a topology run
on one host.  ``haproxy -f haproxy.cfg`` as any user (no chroot, no user).

Per public listener a backend with one server per replica, ``balance
leastconn``, active health checks on ``/readyz`` (a draining replica answers
503 and leaves the pool before it closes its listener).

Retries, exactly: ``retry-on conn-failure empty-response response-timeout
503`` with ``retries`` and ``option redispatch 1`` (every retry goes to
another server).  HAProxy itself would replay any method on those events,
so ``http-request disable-l7-retry`` turns every layer-7 retry off for
methods other than GET, HEAD, OPTIONS, PUT and DELETE: a POST or PATCH is
retried only on ``conn-failure``, when it could not be sent at all.
"""

from __future__ import annotations

from amoeba.deploy.nginx import warnings
from amoeba.deploy.plan import Plan, edge_port_conflict, route_regex

__all__ = ["render"]


def render(plan: Plan) -> dict[str, str]:
    if not plan.upstreams:
        raise ValueError(f"{plan.source}: no process has a public listener: nothing for HAProxy to "
                         f"front; fix: add `public: true` to a listener")
    edge_port_conflict(plan, "HAProxy")
    tries = max(len(u.servers) for u in plan.upstreams)
    uses = []
    for r in plan.routes:
        if r.mount:  # a mounted app's prefix and everything below it
            cond = f"path {r.path} }} || {{ path_beg {r.below}"
        else:
            cond = f"path {r.path}" if r.exact else f"path_reg {route_regex(r.path)}"
        uses.append(f"    use_backend {r.upstream} if {{ {cond} }}\n")
    backends = []
    for u in plan.upstreams:
        servers = "".join(f"    server {u.name}-{i} {h}:{p}\n" for i, (h, p) in enumerate(u.servers))
        backends.append(f"""
backend {u.name}
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host edge
    http-check expect status 200
    default-server check inter 2s fall 2 rise 2
{servers}""")
    host = plan.deploy.edge_host
    host_rule = (f"    http-request deny deny_status 404 unless {{ req.hdr(host),field(1,:) -i {host} }}\n"
                 if host else "")
    return {"haproxy.cfg": f"""{plan.header("haproxy")}{warnings(plan)}# Run: haproxy -f haproxy.cfg
global
    maxconn 4096
    log stderr format raw local0

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect {plan.connect_timeout_ms}ms
    timeout client {plan.read_timeout + 5}s
    timeout server {plan.read_timeout}s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 5s
    timeout check 2s
    retries {max(2, tries)}
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 503

frontend edge
    bind :{plan.deploy.edge_port}
{host_rule}    # The gateway's body limit (settings.max_body), by Content-Length; a chunked
    # body is capped by the gateway itself.
    http-request deny deny_status 413 if {{ req.hdr_val(content-length) gt {plan.settings.max_body} }}
    # Internal endpoints never leave the host through the edge.
    http-request deny deny_status 403 if {{ path /metrics }} || {{ path /_amoeba }}
    http-request deny deny_status 403 if {{ path_beg /_amoeba/ }}
    # Keep the client's request id when it sent one, else a fresh UUID.
    unique-id-format %[uuid()]
    http-request set-header X-Request-Id %[unique-id] unless {{ req.hdr(x-request-id) -m found }}
    http-request set-var(txn.request_id) req.hdr(x-request-id)
    http-response set-header X-Request-Id %[var(txn.request_id)]
    option forwardfor
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http unless {{ ssl_fc }}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    # Only idempotent methods are retried after they were sent (see haproxy.py).
    http-request disable-l7-retry unless {{ method GET HEAD OPTIONS PUT DELETE }}
{"".join(uses)}    default_backend {plan.upstreams[0].name}
{"".join(backends)}"""}
