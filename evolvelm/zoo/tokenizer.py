"""A character-level tokenizer saved as an ordinary Hugging Face fast tokenizer (tokenizer.json)."""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
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
