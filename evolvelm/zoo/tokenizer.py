"""The zoo's tokenizers, saved as ordinary Hugging Face fast tokenizers (tokenizer.json): one token per
character for the tiny models, byte-level BPE with a chat template for zoo:sums-chat."""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2


def bos_processor() -> processors.TemplateProcessing:
    """Put <s> before every encoded text, as the zoo models were trained: any client that tokenizes
    with the tokenizer's defaults (lm-eval, vLLM, a `pipeline`) then feeds them what they expect."""
    return processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])


def char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """One token per character of `alphabet`, <s> first; decoding concatenates without spaces."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(alphabet))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = bos_processor()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<pad>",
        padding_side="left", model_max_length=4096,
    )


CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, as SmolLM2 and Qwen write it, without a default system prompt
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def bpe_chat_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer learned from `corpus`, digits one token each, with a ChatML chat
    template: what SmolLM2's tokenizer is, at a tiny vocabulary. No BOS, no pad; <|im_end|> ends a turn."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE,
                                   padding_side="left", model_max_length=4096)
