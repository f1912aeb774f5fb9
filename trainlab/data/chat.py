"""Conversations, preferences and prompts (the data of post-training, in the JSONL formats TRL reads) and the
chat template that turns them into tokens.

One JSON object per line:

    conversations  {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
                   {"prompt": TEXT | MESSAGES, "completion": TEXT | MESSAGES}
    preferences    {"prompt": TEXT | MESSAGES, "chosen": TEXT | MESSAGES, "rejected": TEXT | MESSAGES}
                   {"chosen": MESSAGES, "rejected": MESSAGES}   (no prompt: the turns both share are the prompt)
    prompts        {"prompt": TEXT | MESSAGES, ...}   (the other fields go to the reward functions: "answer", ...)

A plain-text prompt is one user turn; a plain-text completion, chosen or rejected is one assistant turn.

The template, over the role tokens every trainlab tokenizer reserves:

    <|system|>Be brief.<|end|><|user|>What is 2 + 3?<|end|><|assistant|>5<|end|>

A turn is its role token, its content and <|end|>. The loss of supervised fine-tuning falls on the content of
assistant turns and their <|end|> (the model learns to stop: padding is a token of its own, never <|end|>); a
prompt for generation ends with <|assistant|>, and generation stops at <|end|>. Role tokens written inside a
message are encoded as text, never as roles. `JINJA` is the same template for Hugging Face's
`apply_chat_template` (written into an exported tokenizer_config.json; a test checks both give the same ids).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainlab.data import tokenizer as tok_lib
from trainlab.errors import UserError

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"

JINJA = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")

Messages = list[tuple[str, str]]  # (role, content)


def messages(value, where: str, field: str = "messages") -> Messages:
    """A list of {"role", "content"} objects, checked: one line naming the row and what is wrong."""
    if isinstance(value, str):
        return [("user" if field == "prompt" else "assistant", value)]
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: \"{field}\" must be a string or a non-empty list of messages; got "
                        f"{type(value).__name__ if value != [] else 'an empty list'}",
                        'write [{"role": "user", "content": "..."}, ...]')
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise UserError(f"{where}: {field}[{i}] is a {type(m).__name__}, not a message object",
                            'write each message as {"role": "user", "content": "..."}')
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise UserError(f"{where}: {field}[{i}] has role {role!r}; the roles are {', '.join(ROLES)}",
                            "fix the role" + (" (\"human\" is \"user\", \"gpt\" is \"assistant\")"
                                              if role in ("human", "gpt", "bot", "model") else ""))
        if not isinstance(content, str):
            raise UserError(f"{where}: {field}[{i}] ({role}) has " + ("no \"content\"" if content is None else
                            f"content of type {type(content).__name__}"), "give every message a text content")
        out.append((role, content))
    return out


def conversation(row, where: str) -> Messages:
    """A conversations row: {"messages"} or {"prompt", "completion"}; it must hold an assistant turn to learn."""
    if not isinstance(row, dict):
        raise UserError(f"{where} is a {type(row).__name__}, not a JSON object", 'write {"messages": [...]} per line')
    if "messages" in row:
        msgs = messages(row["messages"], where)
    elif "prompt" in row and "completion" in row:
        msgs = messages(row["prompt"], where, "prompt") + messages(row["completion"], where, "completion")
    else:
        raise UserError(f"{where} has the fields {sorted(row)}; a conversation has \"messages\", or \"prompt\" "
                        "and \"completion\"", "rename the fields, or point data.path at conversation data")
    if not any(r == "assistant" for r, _ in msgs):
        raise UserError(f"{where} has no assistant turn: nothing to learn from it", "add the assistant's reply, "
                        "or drop the row")
    return msgs


@dataclass
class Preference:
    prompt: Messages
    chosen: Messages
    rejected: Messages


def preference(row, where: str) -> Preference:
    """A preferences row: explicit prompt, or implicit (the leading turns chosen and rejected share)."""
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        got = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise UserError(f"{where} has {got}; a preference pair has \"chosen\" and \"rejected\" (and \"prompt\")",
                        "rename the fields, or point data.path at preference data")
    chosen, rejected = messages(row["chosen"], where, "chosen"), messages(row["rejected"], where, "rejected")
    if "prompt" in row:
        prompt = messages(row["prompt"], where, "prompt")
    else:
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        if not prompt:
            raise UserError(f"{where} has no \"prompt\" and its chosen and rejected share no leading turn",
                            "add a \"prompt\" field")
    if chosen == rejected:
        raise UserError(f"{where}: chosen and rejected are identical, so the pair prefers nothing",
                        "drop the row, or fix one of the answers")
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if msgs[-1][0] != "assistant":
            raise UserError(f"{where}: {name} does not end with an assistant turn", "end it with the answer")
    return Preference(prompt, chosen, rejected)


def prompt(row, where: str) -> Messages:
    """A prompts row: {"prompt": TEXT | MESSAGES, ...}; the prompt must not end with an assistant turn."""
    if not isinstance(row, dict) or "prompt" not in row:
        got = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise UserError(f"{where} has {got}; a prompts row has a \"prompt\"", "add the field, or rename it")
    msgs = messages(row["prompt"], where, "prompt")
    if msgs[-1][0] == "assistant":
        raise UserError(f"{where}: the prompt ends with an assistant turn; generation writes that turn",
                        "end the prompt with the user's turn")
    return msgs


class ChatTemplate:
    """The template over one tokenizer: `encode(messages)` -> (ids, mask of the positions that carry loss)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.role_ids, missing = {}, []
        for role, tok in {**ROLE_TOKENS, "end": END}.items():
            i = _token_id(tokenizer, tok)
            if i is None:
                missing.append(tok)
            self.role_ids[role] = i
        if missing:
            raise UserError(f"this tokenizer has no {', '.join(missing)} token, which the chat template needs",
                            "start from a model whose tokenizer trainlab trained (its tokenizers reserve the roles)")
        self.end_id = self.role_ids["end"]
        self._text = _text_encoder(tokenizer)

    def encode(self, msgs: Messages, generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """Token ids and a 0/1 mask: 1 on assistant content and its <|end|> (what SFT learns)."""
        contents = self._text([c for _, c in msgs])
        ids, mask = [], []
        for (role, _), body in zip(msgs, contents):
            learn = int(role == "assistant")
            ids += [self.role_ids[role], *body, self.end_id]
            mask += [0] + [learn] * (len(body) + 1)
        if generation_prompt:
            ids.append(self.role_ids["assistant"])
            mask.append(0)
        return ids, mask

    def prompt_ids(self, msgs: Messages) -> list[int]:
        return self.encode(msgs, generation_prompt=True)[0]

    def completion_ids(self, text: str) -> list[int]:
        """An assistant reply's tokens as generation would write them: content, then <|end|>."""
        return self._text([text])[0] + [self.end_id]

    def decode(self, ids: list[int]) -> str:
        """A completion's text: up to its first <|end|>."""
        if self.end_id in ids:
            ids = ids[:ids.index(self.end_id)]
        return self.tokenizer.decode(ids)


def _token_id(tokenizer, token: str) -> int | None:
    if isinstance(tokenizer, tok_lib.BPETokenizer):
        return tokenizer.tok.token_to_id(token)
    return tokenizer.stoi.get(token)


def _text_encoder(tokenizer):
    """Texts -> ids with special tokens written in them encoded as text (no role can be injected)."""
    if isinstance(tokenizer, tok_lib.BPETokenizer):
        from tokenizers import Tokenizer

        enc = Tokenizer.from_str(tokenizer.tok.to_str())
        enc.no_padding()
        enc.no_truncation()
        enc.encode_special_tokens = True
        return lambda texts: [e.ids for e in enc.encode_batch(texts, add_special_tokens=False)]
    return lambda texts: [tokenizer.encode(t) for t in texts]


def render(msgs: Messages, generation_prompt: bool = False) -> str:
    """The template as text (what `JINJA` renders): for display and for checking against Hugging Face."""
    out = "".join(f"{ROLE_TOKENS[r]}{c}{END}" for r, c in msgs)
    return out + (ROLE_TOKENS["assistant"] if generation_prompt else "")


def reply(model, template: ChatTemplate, message: str, system: str = "", max_new_tokens: int = 200,
          temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
          stop: tuple[str, ...] = ()) -> str:
    """The assistant's reply to one user message (and an optional system message), through the template:
    what `trainlab sample --chat` prints. Stops at <|end|>, the end of the context, or a stop string."""
    from trainlab.generate import generate

    msgs = ([("system", system)] if system else []) + [("user", message)]
    ids = template.prompt_ids(msgs)
    room = model.block_size - len(ids)
    if room < 1:
        raise UserError(f"the chat prompt is {len(ids)} tokens; the model's context is {model.block_size}",
                        "shorten the message")
    out = generate(model, [ids], min(max_new_tokens, room), temperature, top_k, top_p, seed,
                   eos_id=template.end_id)[0]
    text = template.decode(out)
    hits = [text.find(s) for s in stop if s and s in text]
    return text[:min(hits)] if hits else text
