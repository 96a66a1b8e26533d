"""What tests read from and force into the record beyond the repository's own methods:
plain queries through the repository's sessions."""

from __future__ import annotations

from sqlalchemy import func, select

from service.storage import Repository, RunStatus
from service.storage.models import Run, Step, Trajectory


def set_status(
    repo: Repository, run_id: int, status: RunStatus | str, error: str | None = None
) -> Run:
    """Put a run in `status` from whatever state it is in, as the pipeline moves runs."""
    return repo.transition(run_id, tuple(RunStatus), RunStatus(status), error)


def recorded_steps(repo: Repository, run_id: int) -> list[Step]:
    """The run's recorded steps in step order."""
    with repo.sessions() as s:
        return list(s.scalars(select(Step).where(Step.run_id == run_id).order_by(Step.step)))


def trajectory_count(repo: Repository, run_id: int) -> int:
    with repo.sessions() as s:
        return s.scalar(select(func.count()).where(Trajectory.run_id == run_id)) or 0
