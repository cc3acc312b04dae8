"""gunicorn settings shared by the three services (workers are set per service by supervisord)."""

import gc
import os
import sys

# The policy service answers every request that reaches Orthanc, from memory: an event
# loop per worker (services/policy_service/asgi.py says why). The other two wait on
# bcrypt and Redis, which release the GIL: threads keep a worker busy while one waits.
POLICY = any("policy_service" in arg for arg in sys.argv)

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
worker_class = "services.policy_service.asgi.PolicyWorker" if POLICY else "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# The master loads the app only for a service of several workers: infra/render.py's
# gunicorn_workers() adds --preload then, and says why not otherwise.
preload_app = False


def pre_fork(server, worker):  # type: ignore[no-untyped-def]  # gunicorn's hook signature
    """Freeze what the master holds: its pages stay shared with the worker it forks.

    A page is shared only until either process writes to it, and a full collection
    writes into the header of every object it walks. In a worker of the preloaded token
    service, the first one unshared 22 MB of the 41 MB it had from the master
    (docs/BENCHMARKS.md). Frozen objects are never walked, in the worker or in the
    master; they are the code and settings the preload made, which live as long as the
    process anyway.
    """
    gc.freeze()


# A master killed with SIGKILL leaves its workers holding the port for a moment;
# SO_REUSEPORT lets the master supervisord starts next bind at once.
reuse_port = True
# gunicorn 27's control socket defaults to one path per user: three services
# (and several stacks) would fight over it, and nothing here uses it.
control_socket_disable = True
timeout = 30
graceful_timeout = 10
keepalive = 30

# The policy service writes one audit line per decision (STATE_DIR/logs/audit.log); an
# access line as well would double the logging on the hot path (issue 6, docs/BENCHMARKS.md).
accesslog = None if POLICY else "-"
errorlog = "-"
loglevel = "info"
# %(U)s is the path without the query string: a token in `?token=` never reaches a log.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
