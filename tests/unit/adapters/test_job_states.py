"""How a SAQ job reads as a JobState: an earlier attempt's error is not shown beside a retry that is running."""

import pytest
from saq.job import Job, Status

from support.adapters.valkey.jobs import _state

TRACE = "Traceback (most recent call last):\n  ...\nasyncio.exceptions.CancelledError: cancelled"


@pytest.mark.parametrize("status", [Status.QUEUED, Status.ACTIVE, Status.COMPLETE])
def test_a_job_that_did_not_end_badly_shows_no_error(status: Status) -> None:
    # A job cut short by a restart is retried with the old attempt's error still on it.
    assert _state(Job(function="ingest", key="job-1", status=status, error=TRACE)).error is None


@pytest.mark.parametrize("status", [Status.FAILED, Status.ABORTED])
def test_a_job_that_ended_badly_shows_the_last_line_of_its_error(status: Status) -> None:
    state = _state(Job(function="ingest", key="job-1", status=status, error=TRACE))
    assert state.error == "asyncio.exceptions.CancelledError: cancelled"
    assert state.status == status.value
