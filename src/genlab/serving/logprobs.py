"""Token logprobs in OpenAI's two shapes, from the engine's records: (token id, logprob or None, {id: logprob}).

Completions (the legacy shape lm-evaluation-harness reads): parallel lists `tokens`, `token_logprobs`,
`top_logprobs` and `text_offset`; with `echo` the prompt's tokens come first, the very first with no
logprob. Chat: `content`, one entry per token with its bytes and its `top_logprobs` as a list.
Logprobs are the model's own (a log-softmax of its logits), before temperature, penalties or cuts.
"""

from __future__ import annotations

from typing import Any

Record = tuple[int, float | None, dict[int, float]]


def completion_logprobs(token_text, records: list[Record]) -> dict[str, Any]:
    """`token_text(id) -> str` names each token; offsets count characters from the start of the returned text."""
    tokens = [token_text(token) for token, _, _ in records]
    offsets, at = [], 0
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in records],
            "top_logprobs": [None if lp is None else {token_text(t): v for t, v in top.items()}
                             for _, lp, top in records],
            "text_offset": offsets}


def chat_logprobs(token_text, token_bytes, records: list[Record]) -> dict[str, Any]:
    """`token_bytes(id) -> bytes`: a token that holds part of a character shows a replacement character as its
    text, so its bytes are the token's own; joined, the entries' bytes decode to the message."""
    def entry(token: int, logprob: float) -> dict[str, Any]:
        return {"token": token_text(token), "logprob": logprob, "bytes": list(token_bytes(token))}

    return {"content": [{**entry(token, lp), "top_logprobs": [entry(t, v) for t, v in top.items()]}
                        for token, lp, top in records if lp is not None], "refusal": None}
