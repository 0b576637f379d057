"""Tokens to text while streaming: incremental UTF-8 decoding and stop strings.

A token may end in the middle of a UTF-8 character (byte-fallback pieces), and a stop string may
arrive split over several tokens, so text is released only once it is final: complete characters,
minus any tail that could still become a stop string. The concatenated stream equals the
one-shot decode, cut before the first stop string.

Works with any tokenizer that has ``decode_bytes(ids, skip_special_tokens=...) -> bytes``
(``tokenizer.Tokenizer`` does).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class StopStringMatcher:
    """Holds back text that might be the start of a stop string; reports the first full match."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that is final, whether a stop string ended the stream; nothing after it counts)."""
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[:min(hits)], True
        keep = self._longest_partial(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_partial(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best


class TextStream:
    """Token ids in, final text out (``feed``), then ``finish`` for the remainder."""

    def __init__(self, decode_bytes: Callable[..., bytes], stop: Sequence[str] = (), *,
                 skip_special_tokens: bool = True):
        self._decode_bytes = decode_bytes
        self._skip = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = StopStringMatcher(stop)
        self.stopped = False   # a stop string matched: the caller should end the request

    def feed(self, token_ids: Sequence[int]) -> str:
        if self.stopped or not token_ids:
            return ""
        text = self._utf8.decode(self._decode_bytes(token_ids, skip_special_tokens=self._skip))
        out, self.stopped = self._stop.feed(text)
        return out

    def finish(self) -> str:
        """The rest: an incomplete final character (as U+FFFD) and any held-back text."""
        if self.stopped:
            return ""
        out, self.stopped = self._stop.feed(self._utf8.decode(b"", final=True))
        return out if self.stopped else out + self._stop.flush()
