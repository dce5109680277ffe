"""WebSocket client frames are held to their shape, as request bodies are (api.controllers.conversations)."""

import pytest

from support.api.controllers.conversations import FrameError, PingFrame, SendFrame, TypingFrame, decode_frame


def test_the_three_frames_decode() -> None:
    assert decode_frame('{"type": "ping", "data": {"t": 1}}') == PingFrame(data={"t": 1})
    assert decode_frame(b'{"type": "typing"}') == TypingFrame(active=True)
    assert decode_frame('{"type": "send", "content": "hi", "idempotency_key": "k"}') == SendFrame("hi", "k")


@pytest.mark.parametrize(
    ("data", "code", "detail"),
    [
        # An unknown field would be dropped silently (REST refuses it): refused here too.
        ('{"type": "send", "content": "hi", "metadata": {"a": "b"}}', "invalid_input", "unknown field `metadata`"),
        ('{"type": "send", "content": "hi", "idempotency_key": 5}', "invalid_input", "$.idempotency_key"),
        ('{"type": "send"}', "invalid_input", "missing required field `content`"),
        ('{"type": "typing", "active": "false"}', "invalid_frame", "$.active"),
        ('{"type": "ping", "data": 1, "extra": {"ts": 1}}', None, None),  # a keepalive may stamp what it likes
        ('{"type": {}}', "invalid_frame", "Send frames of type send, typing or ping."),
        ('{"type": []}', "invalid_frame", "Send frames of type send, typing or ping."),
        # A bad field, then a lone surrogate: the second look at the frame must not fail either.
        ('{"type": "shout", "x": "\\ud800"}', "invalid_frame", "no lone surrogates"),
        ('{"type": "send", "content": 1, "x": "\\ud800"}', "invalid_frame", "no lone surrogates"),
        ('{"type": "shout"}', "invalid_frame", "Send frames of type send, typing or ping."),
        ("[1, 2]", "invalid_frame", "Send frames of type send, typing or ping."),
        # msgspec calls a lone surrogate "truncated" input; the frame's problem is said plainly instead.
        ('{"type": "send", "content": "\\ud800"}', "invalid_frame", "no lone surrogates"),
        ("not json", "invalid_frame", "a JSON object in UTF-8 text"),
    ],
)
def test_a_frame_of_the_wrong_shape_is_refused_naming_the_problem(
    data: str, code: str | None, detail: str | None
) -> None:
    if code is None:
        assert isinstance(decode_frame(data), PingFrame)
        return
    with pytest.raises(FrameError) as refused:
        decode_frame(data)
    assert refused.value.code == code
    assert detail is not None
    assert detail in refused.value.detail
