"""gunicorn settings shared by the three services.

Per service, infra/render.py names the worker class and the number of workers.
"""

import gc
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# The master loads the app only for a service of several workers: infra/render.py's
# gunicorn_workers() adds --preload then, and says why not otherwise.
preload_app = False


def pre_fork(server, worker):  # gunicorn's hook signature
    """Freeze what the master holds: its pages stay shared with the worker it forks.

    A page is shared only until either process writes to it, and a full collection
    writes into the header of every object it walks: a worker's first one would unshare
    about half of what it had from the master (docs/BENCHMARKS.md). Frozen objects are
    never walked, in the worker or in the master; they are the code and settings the
    preload made, which live as long as the process anyway.
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

# The policy's worker logs no access lines (its uvicorn settings, services/policy_service/
# asgi.py): its audit line per decision is the record.
accesslog = "-"
errorlog = "-"
loglevel = "info"
# %(U)s is the path without the query string: a token in `?token=` never reaches a log.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
