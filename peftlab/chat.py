"""Instruction data in the common shapes as chat messages, rendered with the tokenizer's chat template into text
pieces with the assistant turns marked: what causal_lm trains on (loss on assistant turns only) and prompts with.

Shapes (Data.chat_format) and their column names (Data.columns maps them to the data's own names):
- None: a prompt column (data.text) and a response column (data.label): one user turn, one assistant turn.
- "alpaca": `instruction`, `input` (optional; appended to the instruction after a blank line), `output`, and an
  optional `system` column.
- "sharegpt": `conversations`, a list of turns {"from": "human" | "gpt" | "system", "value": text} (turns keyed
  role/content are read too), and an optional `system` column.
- "messages": `messages`, a list of {"role": "system" | "user" | "assistant", "content": text} (OpenAI's shape).
A conversation may hold any number of turns; every assistant turn is trained on.

Why assistant turns are found by rendering prefixes, not with apply_chat_template(return_assistant_tokens_mask=True):
transformers builds that mask only from templates that wrap assistant turns in {% generation %}, which few models
ship (SmolLM2's does not). Rendering the conversation up to each assistant turn (with the generation prompt) and
through it finds the turn's text in any template that renders a conversation's beginning as the beginning of the
longer conversation; a template that does not (one that rewrites earlier turns) is refused in one line.
"""

from __future__ import annotations

from .errors import PeftlabError, check

# shape -> (required columns, optional columns), by their names in the shape
CHAT_COLUMNS = {"alpaca": (("instruction", "output"), ("input", "system")),
                "sharegpt": (("conversations",), ("system",)),
                "messages": (("messages",), ())}
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
NO_TEMPLATE = ("the tokenizer has no chat template; set data.prompt_template, e.g. 'Question: {question}\\nAnswer: ' "
               "(data without a chat_format), or use a chat model")


def check_chat_data(data, where: str) -> None:
    """Recipe checks of a Data with a chat_format: columns it maps, fields it does not use."""
    required, optional = CHAT_COLUMNS[data.chat_format]
    unknown = sorted(set(data.columns or {}) - set(required + optional))
    check(not unknown, f"{where}.columns: {', '.join(map(repr, unknown))} is not a column of chat_format="
                       f"{data.chat_format!r}; map some of {', '.join(required + optional)}")
    check(data.prompt_template is None, f"{where}.prompt_template: chat_format={data.chat_format!r} data is rendered "
                                        "with the tokenizer's chat template; remove prompt_template")
    check((data.text, data.label, data.text_pair) == ("text", "label", None),
          f"{where}.text/label/text_pair name the prompt and response columns of data without a chat_format; map "
          f"the columns of chat_format={data.chat_format!r} with data.columns, e.g. columns={{{required[-1]!r}: "
          "'your_column'}")


def column(data, name: str) -> str:
    """The data's name for one of the shape's columns."""
    return (data.columns or {}).get(name, name)


def columns(data) -> list[str]:
    """The columns the data must have: the shape's required ones and the optional ones the recipe maps."""
    if data.chat_format is None:
        return [data.text, data.label]
    required, optional = CHAT_COLUMNS[data.chat_format]
    return [column(data, c) for c in required] + [column(data, c) for c in optional if c in (data.columns or {})]


def _text(value, where: str, what: str) -> str:
    check(isinstance(value, str) and value.strip() != "", f"{where}: empty text in {what}; remove or fill that row")
    return value


def checked_turn(turn, where: str, number: int) -> dict:
    """One turn of a sharegpt or messages conversation, as {"role", "content"}."""
    check(isinstance(turn, dict), f"{where}: turn {number} is not an object with a role and a text; fix that row")
    role = turn.get("role") or turn.get("from")
    check(role in ROLES, f"{where}: turn {number} has role {role!r}; use system, user (human) or assistant (gpt)")
    content = turn.get("content") if turn.get("content") is not None else turn.get("value")
    return {"role": ROLES[role], "content": _text(content, where, f"turn {number}")}


def messages(row: dict, data, where: str) -> list[dict]:
    """The row as chat messages, checked: known roles, no empty text, a user turn first, an assistant turn."""
    shape = data.chat_format
    system = row.get(column(data, "system")) if shape in ("alpaca", "sharegpt") else None
    turns = [{"role": "system", "content": _text(system, where, "column 'system'")}] if system else []
    if shape is None:
        turns += [{"role": "user", "content": _text(row[data.text], where, f"column '{data.text}'")},
                  {"role": "assistant", "content": _text(row[data.label], where, f"column '{data.label}'")}]
    elif shape == "alpaca":
        instruction = _text(row[column(data, "instruction")], where, f"column '{column(data, 'instruction')}'")
        extra = str(row.get(column(data, "input")) or "")
        turns += [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction},
                  {"role": "assistant", "content": _text(row[column(data, "output")], where,
                                                         f"column '{column(data, 'output')}'")}]
    else:
        name = column(data, CHAT_COLUMNS[shape][0][0])  # "conversations" or "messages"
        conversation = row[name]
        check(isinstance(conversation, list), f"{where}: column '{name}' is not a list of turns; fix that row")
        turns += [checked_turn(turn, where, i) for i, turn in enumerate(conversation, 1)]
    spoken = [t["role"] for t in turns if t["role"] != "system"]
    check(spoken[:1] == ["user"], f"{where}: the conversation must start with a user turn (after any system turn); "
                                  "fix that row")
    check("assistant" in spoken, f"{where}: no assistant turn, nothing to train on; remove that row")
    return turns


def _render(tokenizer, conversation: list[dict], where: str, generation_prompt: bool = False) -> str:
    check(bool(getattr(tokenizer, "chat_template", None)), NO_TEMPLATE)
    try:
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as err:  # the template's own refusal (jinja's raise_exception), e.g. roles that must alternate
        raise PeftlabError(f"{where}: the chat template refuses this conversation ({str(err).splitlines()[0]}); "
                           "fix that row") from None


def render(tokenizer, conversation: list[dict], where: str) -> list[tuple[str, bool]]:
    """The conversation as the chat template renders it, in pieces; True marks each assistant turn: its text and the
    end of turn the template closes it with (so the model learns to stop), not the header that opens it (generation
    is prompted with that header)."""
    full = _render(tokenizer, conversation, where)
    pieces, done = [], 0
    for i, turn in enumerate(conversation):
        if turn["role"] != "assistant":
            continue
        before = _render(tokenizer, conversation[:i], where, generation_prompt=True)
        through = _render(tokenizer, conversation[:i + 1], where)
        check(done <= len(before) <= len(through) and through.startswith(before) and full.startswith(through),
              f"{where}: the chat template does not render the start of this conversation as the start of the whole "
              "(it rewrites earlier turns); train on single-turn rows, or on data without a chat_format with "
              "data.prompt_template")
        pieces += [(full[done:len(before)], False), (full[len(before):len(through)], True)]
        done = len(through)
    return [piece for piece in [*pieces, (full[done:], False)] if piece[0]]


def generation_prompt(tokenizer, conversation: list[dict], where: str = "prompt") -> str:
    """The conversation rendered to where the assistant's reply begins."""
    return _render(tokenizer, conversation, where, generation_prompt=True)


def last_exchange(conversation: list[dict]) -> tuple[list[dict], str]:
    """The conversation before its last assistant turn, and that turn's text: generation answers the last turn."""
    last = max(i for i, turn in enumerate(conversation) if turn["role"] == "assistant")
    return conversation[:last], conversation[last]["content"]
