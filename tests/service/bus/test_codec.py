import math

import pytest

from service.bus.codec import CodecError, decode_batch, encode_batch
from trainer.batch import Batch, Sample


def test_codec_round_trips_a_batch_exactly():
    samples = [
        Sample([1, 2, 3], [4, 5], [-0.1, -1e-300], reward=1.0),
        Sample([1, 2, 3], [6], [-2.5], reward=0, truncated=True, teacher_prompt_ids=[9, 9, 1]),
        Sample([7], [8, 9, 10], [-1 / 3, -math.inf, 0.0], 0.5, response_mask=[1, 0, 1]),
        Sample([7], [], [], reward=-1.25, teacher_prompt_ids=[]),
    ]
    batch = Batch(samples, group_size=2, policy_version=17)

    decoded = decode_batch(encode_batch(batch))

    assert decoded == batch
    assert (decoded.id, decoded.group_size, decoded.policy_version) == (batch.id, 2, 17)
    assert all(isinstance(x, float) for s in decoded.samples for x in s.sampler_logprobs)


def test_codec_rejects_bytes_that_are_not_a_batch():
    with pytest.raises(CodecError):
        decode_batch(b"not json")
    with pytest.raises(CodecError):
        decode_batch(b'{"v": 99}')
    with pytest.raises(CodecError):
        decode_batch(b'{"v": 1, "id": "x"}')
