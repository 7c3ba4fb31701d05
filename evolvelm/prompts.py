"""How a prompt becomes the tokens a model reads, and where its answer starts: one object that
generation, training and scoring all use, so the three can never disagree.

Two formats:
    raw   the prompt as text, with whatever special tokens the tokenizer adds by itself (the zoo
          tokenizers add <s>; SmolLM2's and Qwen's add nothing); an answer ends with EOS
    chat  the prompt as the user turn of the model's chat template (with `system` before it, when
          set), the assistant turn opened; an answer ends with the template's end of turn
`model.chat: auto` takes chat exactly when the tokenizer has a chat template.
"""
from __future__ import annotations

from evolvelm.config import ConfigError


class PromptFormat:
    """Token ids of prompts and of (prompt, answer) pairs for one tokenizer."""

    def __init__(self, tokenizer, chat: str = "auto", system: str = "", stop_ids: tuple[int, ...] = ()):
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat == "on" and not has_template:
            raise ConfigError(f"model.chat: on, but the tokenizer of {tokenizer.name_or_path} has no chat template")
        self.chat = has_template if chat == "auto" else chat == "on"
        self.system = system
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        self.stop_ids = sorted(set(eos) | set(stop_ids))  # any of these ends a generated answer
        self.end_ids = self._end_of_answer()               # what training puts after an answer

    @classmethod
    def load(cls, path: str, chat: str = "auto", system: str = "", tokenizer=None) -> "PromptFormat":
        """The format of the checkpoint at `path`: its tokenizer, and the end-of-sequence ids of its
        generation config beside the tokenizer's own."""
        from transformers import AutoTokenizer, GenerationConfig

        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        try:
            eos = GenerationConfig.from_pretrained(path).eos_token_id
        except OSError:  # no generation_config.json
            eos = None
        return cls(tokenizer, chat, system, tuple([eos] if isinstance(eos, int) else eos or []))

    def _messages(self, prompt: str) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": prompt}]

    def _opened(self, prompt: str) -> str:
        """The chat template's text up to the opened assistant turn."""
        return self.tokenizer.apply_chat_template(self._messages(prompt), tokenize=False, add_generation_prompt=True)

    def _end_of_answer(self) -> list[int]:
        """EOS for raw prompts. Chat: the tokens the template writes after an assistant answer, up to and
        including the first that ends generation (SmolLM2: <|im_end|>); EOS if the template says none."""
        eos = self.stop_ids[:1] or [self.pad_id]
        if not self.chat:
            return [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else eos
        opened = self._opened("x")
        closed = self.tokenizer.apply_chat_template(self._messages("x") + [{"role": "assistant", "content": "y"}],
                                                    tokenize=False)
        if not closed.startswith(opened + "y"):
            return eos
        after = self.tokenizer(closed[len(opened) + 1:], add_special_tokens=False).input_ids
        ends = [i for i, t in enumerate(after) if t in self.stop_ids]
        if not ends:  # the turn ends with a token generation does not stop at: stop at it too
            after = after[:1]
            self.stop_ids = sorted(set(self.stop_ids) | set(after))
            return after or eos
        return after[:ends[0] + 1]

    def prompt_ids(self, prompt: str) -> list[int]:
        """The tokens the model reads before it answers `prompt`."""
        return self.chat_ids([{"role": "user", "content": prompt}]) if self.chat else self.raw_ids(prompt)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The tokens of a conversation (OpenAI-style role/content messages) with the assistant's turn
        opened; the configured system prompt goes first when the messages have none. One user message
        gives exactly `prompt_ids` of its content."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {self.tokenizer.name_or_path} has no chat template")
        if self.system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system}] + messages
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def raw_ids(self, text: str) -> list[int]:
        """The tokens of `text` as it is, with whatever special tokens the tokenizer adds itself."""
        return self.tokenizer(text).input_ids

    def pair_ids(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """The tokens of `prompt` answered with `answer` and closed (EOS or end of turn), and the index
        of the answer's first token: training's loss and `logprobs` cover the tokens from there on."""
        p = self.prompt_ids(prompt)
        return p + self.answer_ids(answer), len(p)

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's tokens and the end of the answer."""
        return self.tokenizer(answer, add_special_tokens=False).input_ids + self.end_ids

    def content_start(self, prompt: str) -> int:
        """Index of the first token of the prompt's own text among `prompt_ids(prompt)` (after BOS, the
        system turn and the user turn's opening): where a task marker sits, for the router's features."""
        if not self.chat:
            return len(self.prompt_ids(prompt)) - len(self.tokenizer(prompt, add_special_tokens=False).input_ids)
        text = self._opened(prompt)
        return len(self.tokenizer(text[:text.rfind(prompt)], add_special_tokens=False).input_ids)

    def render(self, prompt: str) -> str:
        """The text the model reads for `prompt`, special tokens included: stored with every sample."""
        return self.tokenizer.decode(self.prompt_ids(prompt))
