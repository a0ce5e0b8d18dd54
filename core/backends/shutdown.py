"""A quiet end of a Dask LocalCluster: the log records of connections closed by its shutdown dropped.

A worker whose heartbeat is in flight when the cluster closes logs "Failed to communicate with
scheduler during heartbeat" with a CommClosedError traceback, after a run that succeeded. Those
records (and only those: an exception of a closed connection) are dropped from distributed's and
tornado's stderr handlers, on the workers about to close and in this process while it closes.
"""

from __future__ import annotations

import contextlib
import logging


class _ClosedConnections(logging.Filter):
    """Drops log records whose exception is a connection closed under them (a shutdown's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from distributed.comm import CommClosedError
        from tornado.iostream import StreamClosedError

        return not (record.exc_info and isinstance(record.exc_info[1], (CommClosedError, StreamClosedError)))


_LOG_HANDLERS_OF = ("distributed", "tornado")  # distributed's logging puts its stderr handler on these


def _log_handlers() -> set:
    return {handler for name in _LOG_HANDLERS_OF for handler in logging.getLogger(name).handlers}


def drop_closed_connections() -> None:
    """On a worker about to be closed: its closed-connection records dropped until it ends."""
    for handler in _log_handlers():
        handler.addFilter(_ClosedConnections())


@contextlib.contextmanager
def closed_connections_dropped():
    """In this process (client, scheduler and nannies of a LocalCluster): for the shutdown only."""
    dropped, handlers = _ClosedConnections(), _log_handlers()
    for handler in handlers:
        handler.addFilter(dropped)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(dropped)
