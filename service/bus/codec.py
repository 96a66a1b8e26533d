"""trainer.batch.Batch <-> bytes for the batch stream: compact JSON of plain lists.

Python floats survive JSON exactly (shortest repr), and so do NaN / +-inf
(`allow_nan`), so a decoded batch equals the encoded one.
"""

from __future__ import annotations

import json
from typing import Any

from trainer.batch import Batch, Sample

FORMAT_VERSION = 1


class CodecError(ValueError):
    """The bytes are not a batch this codec can read."""


def encode_batch(batch: Batch) -> bytes:
    document = {
        "v": FORMAT_VERSION,
        "id": batch.id,
        "group_size": batch.group_size,
        "policy_version": batch.policy_version,
        "samples": [
            {
                "prompt": s.prompt_ids,
                "response": s.response_ids,
                "logprobs": s.sampler_logprobs,
                "reward": s.reward,
                "truncated": s.truncated,
                "teacher_prompt": s.teacher_prompt_ids,
                "mask": s.response_mask,
            }
            for s in batch.samples
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def decode_batch(data: bytes) -> Batch:
    try:
        document: dict[str, Any] = json.loads(data)
        if document.get("v") != FORMAT_VERSION:
            raise CodecError(f"unknown batch format version {document.get('v')!r}")
        samples = [
            Sample(
                prompt_ids=s["prompt"],
                response_ids=s["response"],
                sampler_logprobs=[float(x) for x in s["logprobs"]],
                reward=float(s["reward"]),
                truncated=s["truncated"],
                teacher_prompt_ids=s["teacher_prompt"],
                response_mask=s["mask"],
            )
            for s in document["samples"]
        ]
        return Batch(
            samples,
            group_size=document["group_size"],
            policy_version=document["policy_version"],
            id=document["id"],
        )
    except CodecError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CodecError(f"not an encoded batch: {e}") from e
