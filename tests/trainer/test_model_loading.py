"""Loading models: safe from several threads at once, names resolved under a ModelAccess,
and a name no alias, directory or reachable hub has fails at once."""

from __future__ import annotations

import threading
import time

import huggingface_hub.constants
import pytest
import torch

from trainer import model_names
from trainer.model import TINY_MODEL_DIR, ModelAccess, ModelNotFound, load_policy, resolve_model

CPU = torch.device("cpu")


def test_models_loaded_in_several_threads_at_once_all_load_and_later_loads_still_work():
    threads, errors = 4, []
    start = threading.Barrier(threads)

    def load() -> None:
        start.wait()
        try:
            load_policy("tiny", device=CPU)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(exc))

    for _ in range(2):
        workers = [threading.Thread(target=load) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert errors == []
    policy, _ = load_policy("tiny", device=CPU)  # what a later run does
    assert all(p.device.type == "cpu" for p in policy.parameters())


def test_the_operator_may_name_any_local_directory(tmp_path):
    assert resolve_model(str(TINY_MODEL_DIR)) == str(TINY_MODEL_DIR)
    with pytest.raises(ModelNotFound, match="config.json missing"):
        resolve_model(str(tmp_path))


def test_restricted_access_allows_aliases_its_models_directory_and_its_allow_list(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "config.json").write_text("{}")
    access = ModelAccess.restricted(models_dir=tmp_path / "models", allowed=("org/allowed",))
    assert resolve_model("tiny", access) == str(TINY_MODEL_DIR)
    assert resolve_model("mine", access) == str((tmp_path / "models" / "mine").resolve())
    for name in [str(TINY_MODEL_DIR), "../models/mine", "mine/..", "org/other", "/mine"]:
        with pytest.raises(ModelNotFound, match="not available on this server"):
            resolve_model(name, access)


@pytest.fixture
def no_hub(monkeypatch):
    """A hub endpoint nothing listens on, and no remembered reachability."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(model_names, "_reachable", {})


def test_an_unknown_name_fails_at_once_when_no_hub_is_reachable(no_hub, caplog):
    began = time.monotonic()
    with pytest.raises(ModelNotFound, match="the model hub is not reachable"):
        load_policy("no-such-org/no-such-model", device=CPU)
    assert time.monotonic() - began < 10  # not the hub client's ~46 s of retries
    assert "Retrying" not in caplog.text


def test_an_unknown_name_fails_at_once_offline(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(model_names, "_reachable", {})
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE") as raised:
        load_policy("no-such-org/no-such-model", device=CPU)
    assert str(raised.value).count("no-such-org/no-such-model") == 1
    assert model_names._reachable == {}  # no request was made to find out
    assert "Retrying" not in caplog.text
