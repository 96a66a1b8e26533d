"""Fixtures shared by the whole suite."""

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tiny.build import build_tiny_model
from tiny.pretrain import PretrainConfig


@pytest.fixture(autouse=True, scope="session")
def reads_show_the_record_at_once():
    """Tests write the record beside the API (a repository, a worker) and read it back
    through the API at once: the API looks the record's version up on every read. The
    tests of `read_freshness_s` itself, and the browser tests, set it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPSD_READ_FRESHNESS_S", "0")
        yield


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run fastest on one thread, most of all on a machine shared with a job."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama_config(**overrides) -> LlamaConfig:
    """A 2-layer, 16-wide Llama config: small enough for any plumbing test."""
    fields = {
        "vocab_size": 32,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        **overrides,
    }
    return LlamaConfig(**fields)


@pytest.fixture(scope="session")
def make_tiny_llama():
    """Factory: a random-initialised tiny LlamaForCausalLM, seeded."""

    def make(seed: int = 0, **overrides) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        return LlamaForCausalLM(tiny_llama_config(**overrides))

    return make


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    """A Hugging Face directory with the tiny model's architecture and tokenizer, untrained."""
    config = PretrainConfig(steps=1, batch_size=4, warmup=1, stop_at_plain_accuracy=None)
    return build_tiny_model(tmp_path_factory.mktemp("random-tiny"), config)
