"""Tokenize a chat conversation the way finetune's SFT data does (src/data/chat.rs, sft.rs):
render the chat template turn by turn, tokenize each piece without special tokens, and mark the
assistant turns (what each adds to the rendering before it plus the generation prompt, so the
end-of-turn marker trains). Shared by bench/sft_reference.py and scripts/check_lm_adapter.py.
"""


def encode_chat(tok, messages, max_length):
    """Token ids and per-token "trained" flags, cut to max_length."""
    render = lambda msgs, gen: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    ids, trained, done = [], [], ""

    def push(text, t):
        piece = tok(text, add_special_tokens=False).input_ids
        ids.extend(piece)
        trained.extend([t] * len(piece))

    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, full = render(messages[:i], True), render(messages[: i + 1], False)
        push(prompt[len(done):], False)
        push(full[len(prompt):], True)
        done = full
    rest = render(messages, False)[len(done):]
    if rest:
        push(rest, False)
    return ids[:max_length], trained[:max_length]
