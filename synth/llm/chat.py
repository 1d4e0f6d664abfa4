"""The plain Qwen2 ChatML chat template, as a Python function and as the equivalent Jinja string.

The tokenizer files we ship (``pipelines.tokenizer``) carry Qwen3's template, which adds ``<think>`` tags; Qwen2
and Qwen2.5 instruct models were trained on plain ChatML with a default system prompt::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant

``QWEN2_CHAT_TEMPLATE`` is set as ``tokenizer.chat_template`` on every checkpoint we save
(``training.checkpoint.save_pretrained_folder``), so vLLM, transformers and ``transformers serve`` format prompts
exactly as ``render_chat`` does. It wraps what the model must learn to write, each assistant turn's content and its
closing ``<|im_end|>``, in ``{% generation %}`` markers (they render nothing): ``apply_chat_template(...,
return_assistant_tokens_mask=True)`` then marks exactly those tokens, which is what TRL's assistant-only loss
trains on. The newline after ``<|im_end|>`` and the ``<|im_start|>assistant`` header are the template's, not the
model's, so they stay unmarked.

    python -m synth.llm.chat     # print a rendered example conversation
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
ROLES = ("system", "user", "assistant")
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CONTROL_TOKENS = (IM_START, IM_END, "<|endoftext|>")

# Qwen2-Instruct's own template (tokenizer_config.json of Qwen/Qwen2-0.5B-Instruct), one line, with the assistant
# turns' content and <|im_end|> inside {% generation %} markers (transformers' extension; the text is unchanged).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Message = Mapping[str, str]


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """ChatML text of ``messages``; a default system turn first when there is none; an open assistant turn
    at the end when ``add_generation_prompt``."""
    parts = []
    if not messages or messages[0]["role"] != "system":
        # Qwen2's template adds the default only inside its loop, so an empty conversation gets none.
        if messages:
            parts.append(f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n")
    for message in messages:
        parts.append(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def validate_chat(messages: Sequence[Message], final_role: str = "assistant") -> list[str]:
    """Problems of a conversation (empty list: fine).

    Rules: each message is a mapping with ``role`` in system/user/assistant and a non-empty string ``content``;
    an optional system message first, then user and assistant alternating starting with user; the last message
    has role ``final_role`` (``"assistant"`` for a finished SFT example, ``"user"`` for a generation prompt).
    """
    if final_role not in ("user", "assistant"):
        raise ValueError(f"final_role must be 'user' or 'assistant', got {final_role!r}")
    problems: list[str] = []
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        return [f"messages must be a list of {{role, content}} mappings, got {type(messages).__name__}"]
    if not messages:
        return ["no messages"]
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            problems.append(f"message {i} is a {type(message).__name__}, not a mapping")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"message {i} ({role}) has empty or non-string content")
        elif any(marker in content for marker in CONTROL_TOKENS):
            problems.append(f"message {i} ({role}) contains a control token ({', '.join(CONTROL_TOKENS)})")
    if problems:
        return problems
    roles = [m["role"] for m in messages]
    turns = roles[1:] if roles[0] == "system" else roles
    if "system" in turns:
        problems.append(f"system message at position {roles.index('system', 1)}; only the first may be system")
    if not turns:
        problems.append("no user or assistant message after the system message")
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != "system" and role != expected:
            problems.append(f"turn {i} is {role}, expected {expected} (user and assistant must alternate)")
            break
    if turns and turns[-1] != final_role:
        problems.append(f"the last message is {turns[-1]}, expected {final_role}")
    return problems


if __name__ == "__main__":
    print(render_chat([{"role": "user", "content": "Write a Python function that adds two numbers."}]), end="")
