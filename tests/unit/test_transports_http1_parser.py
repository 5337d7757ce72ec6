"""The lean HTTP/1.1 client's answer parser and request heads (``campaigns/transports/http1.py``) -- no network."""

from __future__ import annotations

import gzip
import zlib

import pytest

from campaigns.transports.http1 import MAX_HEAD_BYTES, ProtocolError, ResponseParser, _header_lines


def parse(raw: bytes, *, byte_by_byte: bool = False, close: bool = False):
    parser = ResponseParser()
    pieces = [raw[i : i + 1] for i in range(len(raw))] if byte_by_byte else [raw]
    answers = [a for piece in pieces if (a := parser.feed(piece)) is not None]
    if close:
        answers.append(parser.finish())
    assert len(answers) == 1, answers
    return answers[0], parser


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_content_length_answer(byte_by_byte: bool) -> None:
    raw = b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"sid":"SM1"}'
    answer, parser = parse(raw, byte_by_byte=byte_by_byte)
    assert (answer.status, answer.body, answer.keep_alive) == (201, b'{"sid":"SM1"}', True)
    assert answer.headers["content-type"] == "application/json"
    assert not parser.trailing_bytes


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_chunked_answer_with_extensions_and_trailers(byte_by_byte: bool) -> None:
    raw = (
        b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
        b'5;name=x\r\n{"cod\r\n8\r\ne":20429\r\n1\r\n}\r\n0\r\nX-Trailer: 1\r\n\r\n'
    )
    answer, _ = parse(raw, byte_by_byte=byte_by_byte)
    assert (answer.status, answer.body, answer.keep_alive) == (429, b'{"code":20429}', True)
    assert answer.headers["retry-after"] == "3"


def test_interim_answers_are_skipped() -> None:
    answer, _ = parse(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert (answer.status, answer.body, "link" in answer.headers) == (200, b"ok", False)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",  # ambiguous framing
    ],
)
def test_answers_after_which_the_connection_is_not_reused(head: bytes) -> None:
    answer, _ = parse(head)
    assert answer.status == 200 and not answer.keep_alive


def test_body_delimited_by_the_close() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 503 Service Unavailable\r\n\r\nbusy ") is None
    assert parser.feed(b"now") is None
    answer = parser.finish()
    assert (answer.status, answer.body, answer.keep_alive) == (503, b"busy now", False)


def test_no_body_for_204_and_status_line_without_reason() -> None:
    answer, _ = parse(b"HTTP/1.1 204\r\n\r\n")
    assert (answer.status, answer.body, answer.keep_alive) == (204, b"", True)


def test_stream_ending_early_is_a_protocol_error() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ProtocolError):
        parser.finish()
    with pytest.raises(ProtocolError):
        ResponseParser().finish()


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send it
    ],
)
def test_compressed_content_is_decoded(coding: str, encode) -> None:
    body = encode(b'{"sid":"SM1"}')
    raw = f"HTTP/1.1 201 Created\r\nContent-Encoding: {coding}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    assert parse(raw)[0].body == b'{"sid":"SM1"}'


def test_duplicate_fields_are_combined_and_extra_bytes_flagged() -> None:
    answer, parser = parse(b"HTTP/1.1 200 OK\r\nVary: a\r\nVary: b\r\nContent-Length: 1\r\n\r\nxHTTP/1.1")
    assert answer.headers["vary"] == "a, b" and answer.body == b"x"
    assert parser.trailing_bytes


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
    ],
)
def test_malformed_answers_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(raw)


def test_oversized_head_is_refused() -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES)


def test_header_lines_refuse_injection() -> None:
    assert (
        _header_lines({"Idempotency-Key": "m-1", "Content-Type": "x"}) == "Idempotency-Key: m-1\r\nContent-Type: x\r\n"
    )
    for bad in ("m-1\r\nX-Evil: 1", "m-1\nX: 1", "m-1\r", "m\x00"):
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            _header_lines({"Idempotency-Key": bad})
