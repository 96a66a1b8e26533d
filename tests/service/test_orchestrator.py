"""How the orchestrator opens a run's policy copy: with the service's sandbox settings.

The runs themselves are driven in tests/service/test_pipeline.py; here nothing runs,
so the orchestrator gets an in-process bus and a repository it never touches.
"""

from __future__ import annotations

from sandbox import SandboxSettings
from service.bus import make_bus
from service.pipeline.orchestrator import Orchestrator
from service.settings import Settings
from service.storage import Repository, make_engine, make_sessionmaker
from trainer.presets import preset


def orchestrator(settings: Settings, **kwargs) -> Orchestrator:
    repo = Repository(make_sessionmaker(make_engine(f"sqlite:///{settings.data_dir}/x.db")))
    return Orchestrator(repo, make_bus(None), settings, **kwargs)


def test_a_runs_code_environment_scores_in_the_sandbox_the_settings_name(tmp_path):
    sandbox = SandboxSettings(backend="process", image="unused:1")
    settings = Settings(data_dir=tmp_path, device="cpu", sandbox=sandbox)
    cfg = preset("sdpo", {"model": "tiny", "env": "code", "env_config": {"workers": 1}})
    session = orchestrator(settings).open_policy(cfg, settings.device)
    try:
        assert session.learner is None  # a sampling-only copy
        built = session.env.sandbox_settings
        assert (built.backend, built.image, built.workers) == ("process", "unused:1", 1)
    finally:
        session.close()


def test_a_given_open_policy_is_called_with_the_config_and_device(tmp_path):
    settings = Settings(data_dir=tmp_path, device="cpu")
    opened = orchestrator(settings, open_policy=lambda c, d: (c, d)).open_policy("cfg", "cpu")
    assert opened == ("cfg", "cpu")  # benchmarks/pipeline.py's scripted-policy hook
