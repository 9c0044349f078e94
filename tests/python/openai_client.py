"""Drives `conclave server --http` through the official `openai` SDK and prints one JSON object
per scenario on stdout; the Rust test `openai` checks them.

Usage: openai_client.py BASE_URL API_KEY

Scenarios: models (GET /v1/models), whole (non-streamed), stream (streamed, with usage and the
agents' progress), errors (an unknown model, a wrong API key, an empty conversation), cancel
(a stream closed after its first chunk: the session id is printed for the test to check).
"""

import json
import sys

import openai


def emit(name, **fields):
    print(json.dumps({"scenario": name, **fields}), flush=True)


def main():
    base_url, api_key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

    emit("models", ids=[m.id for m in client.models.list()])

    whole = client.chat.completions.create(
        model="conclave",
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3 + 3?"},
        ],
    )
    emit(
        "whole",
        id=whole.id,
        object=whole.object,
        content=whole.choices[0].message.content,
        finish_reason=whole.choices[0].finish_reason,
        total_tokens=whole.usage.total_tokens,
        prompt_tokens=whole.usage.prompt_tokens,
    )

    stream = client.chat.completions.create(
        model="conclave/team",
        messages=[{"role": "user", "content": "Name a colour."}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"conclave_progress": True},
    )
    content, reasoning, finish, usage, chunks = "", "", None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.total_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                content += choice.delta.content
            extra = getattr(choice.delta, "reasoning_content", None)
            if extra is None and choice.delta.model_extra:
                extra = choice.delta.model_extra.get("reasoning_content")
            if extra:
                reasoning += extra
            if choice.finish_reason:
                finish = choice.finish_reason
    emit(
        "stream",
        content=content,
        reasoning_chars=len(reasoning),
        finish_reason=finish,
        total_tokens=usage,
        chunks=chunks,
    )

    errors = {}
    try:
        client.chat.completions.create(
            model="conclave/no-such-config", messages=[{"role": "user", "content": "x"}]
        )
    except openai.NotFoundError as e:
        errors["unknown_model"] = {"status": e.status_code, "code": e.code, "message": e.message}
    try:
        openai.OpenAI(base_url=base_url, api_key="wrong-key-0123456789", max_retries=0).models.list()
    except openai.AuthenticationError as e:
        errors["wrong_key"] = {"status": e.status_code, "code": e.code}
    try:
        client.chat.completions.create(model="conclave", messages=[])
    except openai.BadRequestError as e:
        errors["empty"] = {"status": e.status_code, "type": e.type, "message": e.message}
    emit("errors", **errors)

    stream = client.chat.completions.create(
        model="conclave/slow",
        messages=[{"role": "user", "content": "Take your time."}],
        stream=True,
    )
    first = next(iter(stream))
    stream.close()
    emit("cancel", id=first.id)


if __name__ == "__main__":
    main()
