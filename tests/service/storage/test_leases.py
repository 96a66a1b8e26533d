"""Run leases on SQLite and Postgres: one holder at a time, and a fencing token that keeps
a driver whose lease was taken over from writing."""

import threading

import pytest

from service.storage import AlreadyExists, LeaseLost, NotFound

HOUR = 3600.0


@pytest.fixture
def run_id(repo, env, run_config) -> int:
    return repo.create_run(env.id, run_config).id


def add_batch(repo, run_id: int, step: int, lease=None):
    return repo.add_batch(run_id, step, f"b{step}", 0, b"payload", [], {}, lease=lease)


def test_a_live_lease_is_refused_to_others_and_taken_back_by_its_holder_at_once(repo, run_id):
    first = repo.take_lease(run_id, "replica-a", HOUR)
    assert first is not None and first.token == 1
    assert repo.take_lease(run_id, "replica-b", HOUR) is None
    again = repo.take_lease(run_id, "replica-a", HOUR)  # replica-a restarted
    assert again is not None and again.token == 2
    assert repo.renew_lease(again, HOUR) and not repo.renew_lease(first, HOUR)


def test_an_expired_lease_is_taken_over_and_its_old_holder_can_write_nothing(repo, run_id):
    stale = repo.take_lease(run_id, "replica-a", 0.0)  # expired from the start
    add_batch(repo, run_id, 1, stale)
    fresh = repo.take_lease(run_id, "replica-b", HOUR)
    assert fresh is not None and fresh.token == stale.token + 1

    assert not repo.renew_lease(stale, HOUR)
    with pytest.raises(LeaseLost):
        add_batch(repo, run_id, 2, stale)
    with pytest.raises(LeaseLost):
        repo.add_evaluation(run_id, 0, 0.5, lease=stale)
    assert repo.last_batch_step(run_id) == 1 and repo.evaluations(run_id) == []

    add_batch(repo, run_id, 2, fresh)
    assert repo.add_evaluation(run_id, 0, 0.5, lease=fresh)
    with pytest.raises(AlreadyExists):  # the lease fences; the record still refuses a twin
        add_batch(repo, run_id, 2, fresh)


def test_a_released_lease_is_free_at_once_and_its_token_keeps_growing(repo, run_id):
    first = repo.take_lease(run_id, "replica-a", HOUR)
    repo.release_lease(first)
    second = repo.take_lease(run_id, "replica-b", HOUR)
    assert second is not None and second.token == first.token + 1
    repo.release_lease(first)  # a stale holder's release changes nothing
    assert repo.take_lease(run_id, "replica-a", HOUR) is None
    with pytest.raises(LeaseLost):
        add_batch(repo, run_id, 1, first)


def test_replicas_taking_a_free_lease_at_the_same_time_get_it_once(repo, run_id):
    holders = [f"replica-{i}" for i in range(8)]
    start = threading.Barrier(len(holders))
    taken: dict[str, object] = {}

    def take(holder: str) -> None:
        start.wait()
        taken[holder] = repo.take_lease(run_id, holder, HOUR)

    threads = [threading.Thread(target=take, args=(h,)) for h in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [lease for lease in taken.values() if lease is not None]
    assert len(taken) == len(holders) and len(winners) == 1
    assert winners[0].token == 1


def test_the_lease_of_a_missing_run_is_not_found(repo):
    with pytest.raises(NotFound):
        repo.take_lease(12345, "replica-a", HOUR)
