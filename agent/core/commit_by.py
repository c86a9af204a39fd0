"""When the task putting a batch needs its commit back: the start of its next poll.

A poller waits for its batch to be committed (durable before it counts), so the buffer's commit
window (``buffer.commit_interval``) may hold a batch only until the poller's next poll is due.
The pollers know that time (their cadences) and set it here, per task, around each poll; the
buffer reads it in ``put()``. A context variable, because the value belongs to the polling task
and passes through the pipeline and processing untouched; a put from a task that never set it
(a driver's own event, a test) is committed at once, as without a window.
"""

from __future__ import annotations

from contextvars import ContextVar

COMMIT_BY: ContextVar[float | None] = ContextVar("commit_by", default=None)
"""Event-loop time (``loop.time()``) by which the current task's puts must be committed."""
