"""How CLIP's tokenizer reads a class name or a prompt: which strings it cannot tell apart, and which
show nothing at all.

open_clip's ``SimpleTokenizer`` cleans every text before it splits it (ftfy's ``fix_text``, HTML entities
unescaped, whitespace runs collapsed, lower case), splits words from punctuation whatever the spacing
("pagoda ." and "pagoda." give the same tokens), and keeps the first 75 tokens (77 with the start and
end markers). Prompts with the same tokens get the same text feature, and no image can be classified into
the second of them (argmax takes the first). :func:`prompt_key` asks that tokenizer itself rather than
imitating it.
"""
from __future__ import annotations

import html
import unicodedata
from functools import lru_cache

CONTEXT = 77  # CLIP's text context: the start marker, up to 75 tokens, the end marker


@lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer  # CLIP's byte-level BPE, as open_clip ships it

    return SimpleTokenizer()


def prompt_key(text: str) -> tuple[int, ...]:
    """The BPE token ids CLIP's text encoder reads for ``text`` (between its start and end markers,
    truncated as ``open_clip.tokenize`` truncates, and up to an ``<end_of_text>`` written inside the text:
    the feature is taken at the first end token). Equal keys mean equal text features. Needs
    ``open_clip`` (the ``clip`` extra); the first call loads its vocabulary (about 0.3 s)."""
    ids = _tokenizer().encode(text)[: CONTEXT - 2]
    end = _tokenizer().eot_token_id  # the feature is read at the first end-of-text token: what follows is unseen
    return tuple(ids[: ids.index(end)] if end in ids else ids)


def visible(text: str) -> bool:
    """True when ``text``, with its HTML entities unescaped as CLIP's cleaning does (``&nbsp;`` is a space),
    holds at least one character that is neither a separator (Unicode category Z*: spaces) nor a control,
    format or unassigned character (C*: e.g. the zero-width space U+200B, which ``str.strip`` keeps). A
    class name must be visible: an invisible one prompts with nothing."""
    return any(unicodedata.category(ch)[0] not in "ZC" for ch in html.unescape(html.unescape(text)))
