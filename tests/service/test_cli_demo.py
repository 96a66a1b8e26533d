"""`opsd demo` from nothing: embedded service, a real run of the tiny model, a summary."""

from typer.testing import CliRunner

from service.cli import app


def test_demo_starts_the_embedded_service_trains_and_summarizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSD_DATABASE_URL", raising=False)
    monkeypatch.delenv("OPSD_REDIS_URL", raising=False)
    result = CliRunner().invoke(app, ["demo", "--steps", "3", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "completed" in result.output and "held-out accuracy" in result.output
    run_dir = tmp_path / "d" / "runs" / "1"
    assert (run_dir / "progress.png").stat().st_size > 0
    assert (run_dir / "step-000003" / "model.safetensors").is_file()
    assert (tmp_path / "d" / "opsd.db").is_file()


def test_demo_refuses_an_unknown_algorithm(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--algorithm", "ppo", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "sdpo or grpo" in result.output


def test_demo_against_a_server_that_is_not_there_says_so(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "opsd serve" in result.output
