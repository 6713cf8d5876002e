"""Supervising the multiple-choice letter step: two attention heads told where to look, and a logit lens.

A small from-scratch LLM does not find "which option is the answer, and what is its letter" by itself (0.25
after 20k samples). The answer is written ``<option text> <letter>`` (the official extraction takes the
first A-D character; the option texts are lower case), and three auxiliary terms are added to the loss:

- head ``H1`` of layer ``L1``, at each option's last text token, attends to that option's letter
  (``A`` of ``A. red``);
- after layer ``L2`` (the final norm + ``lm_head``, a logit lens), each option's last text token predicts its
  letter, so the letter is in a direction the output can copy;
- head ``H2`` of layer ``L2``, at the answer's last text token, attends to the right option's last text token;
- with ``spans`` (stage 2f, the tenth session): head ``HS`` of layer ``LS``, at each option's last text token and
  at the answer's, spreads its attention evenly over that text's other tokens (all but the last; a one-token
  text: that token), so the residual there carries the whole text, not only its last token. Without it,
  ``bottom-right`` and ``middle-right`` end in the same ``right`` and head H2 picked either: on make demo's
  bench 9 of 28 position answers had the right text and the letter of another option ending in the same word
  (``to the left of`` / ``to the right of`` end in ``of``).
- with ``first_layer_span`` as well (stage 4, the sixteenth session): head ``H0`` of layer ``L0``, at the same
  places, spreads evenly over the tokens of the text that its *twins* (the other options ending in the same
  token) lack (``LetterPositions.focus``: ``top`` of ``top-right`` beside ``middle-right``, ``left`` of ``to the
  left of`` beside ``to the right of``; a text with no twin: its whole span). After stage 2f the two ``-left``
  options' last tokens already differed after layer 0 (a layer-0 head looked back at ``top`` / ``middle`` from
  ``left``, never from ``right``: cosine 0.75 against 0.99) and head H2 told them apart (0.98 / 0.01), the two
  ``-right`` ones did not (0.46 / 0.53; the letter right 18 / 49), nor ``to the left of`` / ``to the right
  of`` (0.51 / 0.47). With this term H2 splits them 0.95 / 0.03 and 0.95 / 0.02 and the letter given the right
  text is right every time (seeds 4242 / 6464; ``docs/experiments/letter_twins_probe.py``). The same spread
  over the whole text instead fixed the positions but not the relations (0.51 / 0.47).
- the span read (an experiment of the thirteenth session, off: ``SPAN_READ_WEIGHT`` 0): head HS's own output
  at a text's last token, through the final norm and ``lm_head``, names that text's other tokens (a one-token
  text: itself), the head's value path, as the lookup's head read is for the lookup. 400 steps of 16 at lr 3e-4
  from the committed 2f weights (``docs/experiments/continue_2f.py``): position MC on seed 4242 went from 69 to
  75 (the right text's letter more often), shape fell from 71 to 64, and image / video MC on three unseen
  benches came out below the same 400 steps without it (the model card's "Stage 2f, continued").

Measured (issue 14, fifth session): with the image's code rows in the official MC prompt, the letter given
the right text went from 0.27 to 0.79 in 500 steps of 16; without the lens term it stayed at 0.26 with the
heads attending as told. The weights stay a plain Llama: nothing here changes the architecture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InstitError
from ..prompting import IMAGE_TOKEN, render_chat

L1, H1 = 1, 0  # option text -> its letter
L2, H2 = 3, 0  # answer text -> the right option's text (the last layer of the 4-layer default LLM)
LS, HS = 2, 3  # an option's / the answer's last text token -> all of that text's tokens (a head no other term uses)
SPAN_READ_WEIGHT = 0.0  # the span read (an experiment, thirteenth session): its weight; 0, off, did not help
L0, H0 = 0, 3  # stage 4: a text's last token -> what its twins lack, so two texts ending alike differ for H2
_OPTION = re.compile(r"\n([ABCD])\. ([^\n]+)(?=\n)")


def letter_answer(text: str, letter: str) -> str:
    """The answer format the heads are trained on: the option's text, then its letter."""
    return f"{text} {letter}"


@dataclass
class LetterPositions:
    """Token positions in the encoded ids (the ``<image>`` placeholder still one token)."""

    letter: dict  # option letter -> position of its letter token
    last: dict  # option letter -> position of its text's last token
    answer_last: int  # the position that predicts the letter (the answer text's last token when " B" is one token)
    answer: str  # the right letter
    spans: dict | None = None  # option letter -> positions of its text's tokens but the last (one token: it)
    answer_span: tuple[int, ...] = ()  # the same for the answer text
    span_ids: dict | None = None  # option letter -> the token ids at ``spans[letter]``
    answer_span_ids: tuple[int, ...] = ()  # the token ids at ``answer_span``
    focus: dict | None = None  # option letter -> its span's tokens that its twins (options ending alike) lack
    answer_focus: tuple[int, ...] = ()  # the same for the answer text (the right option's twins)


def _focus(span: tuple[int, ...], ids: list[int], twins: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The positions in ``span`` whose token none of ``twins`` (token-id tuples) has; all of it when that leaves
    nothing or there is no twin."""
    shared = {t for tw in twins for t in tw}
    kept = tuple(t for t in span if ids[t] not in shared)
    return kept or span


def letter_positions(sample, input_ids: list[int], tokenizer, template: str) -> LetterPositions | None:
    """Where the heads are supervised in one MC sample answered ``<option text> <letter>``; None for others."""
    user, ans = sample.turns[0]
    m = re.fullmatch(r"(.+) ([ABCD])", ans, flags=re.S)
    opts = dict(_OPTION.findall(user + "\n"))
    if not m or len(opts) != 4 or opts.get(m.group(2)) != m.group(1):
        return None
    first = f"{IMAGE_TOKEN}\n{user}" if sample.media() else user
    text = render_chat(template, [("user", first), ("assistant", ans)], add_generation_prompt=False)
    offs = token_offsets(tokenizer, text, input_ids, "letter heads")

    def at(ch: int) -> int:
        return token_at(offs, ch, "letter heads")

    u0 = text.index(user)
    letter, last, spans = {}, {}, {}
    for k, v in opts.items():
        key = f"\n{k}. {v}"
        j = u0 + user.index(key + "\n" if key + "\n" in user else key)
        letter[k] = at(j + 1)
        last[k] = at(j + len(key) - 1)
        spans[k] = _but_last(at(j + 4), last[k])
    a0 = text.rindex(ans)
    answer_last = at(a0 + len(ans) - 1) - 1
    answer_span = _but_last(at(a0), answer_last)
    span_ids = {k: tuple(input_ids[t] for t in v) for k, v in spans.items()}

    def twins(k: str) -> list[tuple[int, ...]]:
        return [span_ids[o] for o in opts if o != k and input_ids[last[o]] == input_ids[last[k]]]

    return LetterPositions(letter, last, answer_last, m.group(2), spans, answer_span, span_ids,
                           tuple(input_ids[t] for t in answer_span),
                           {k: _focus(v, input_ids, twins(k)) for k, v in spans.items()},
                           _focus(answer_span, input_ids, twins(m.group(2))))


def token_offsets(tokenizer, text: str, input_ids: list[int], who: str) -> list:
    """The character span of each token of ``text``, which must encode to the sample's ``input_ids``
    (``who``: the supervision asking, for the message)."""
    enc = tokenizer(text, return_offsets_mapping=True)
    if enc["input_ids"] != list(input_ids):
        raise InstitError(f"{who}: the sample's tokens differ from the rendered chat; re-encode it")
    return enc["offset_mapping"]


def token_at(offsets, ch: int, who: str) -> int:
    """The token covering character ``ch``."""
    for i, (a, b) in enumerate(offsets):
        if a <= ch < b:
            return i
    raise InstitError(f"{who}: no token covers character {ch}")


def _but_last(first: int, last: int) -> tuple[int, ...]:
    """A text's token positions ``first..last`` without the last one, which the residual there is already;
    a one-token text keeps its token (measured: the whole span, last included, left the letters as they were)."""
    return tuple(range(first, last)) if last > first else (first,)


def lens_loss(out, hidden_index: int, picks: list, lm_head, norm):
    """Logit-lens cross-entropy: ``picks`` = ``(batch row, position, target token)``, each read from
    ``out.hidden_states[hidden_index]`` (0 = the embeddings) through the final norm and ``lm_head``."""
    import torch
    import torch.nn.functional as F

    h = norm(out.hidden_states[hidden_index])
    logits = lm_head(torch.stack([h[i, q] for i, q, _ in picks])).float()
    return F.cross_entropy(logits, torch.tensor([t for *_, t in picks], device=logits.device))


def letter_head_loss(out, positions: list, shifts: list[int], lm_head, norm, letter_ids: dict,
                     spans: bool = False, span_out=None, first_layer_span: bool = False):
    """The three auxiliary terms for a batch (``out`` with attentions and hidden states), with ``spans`` the
    fourth (head HS over each text's own tokens), with ``first_layer_span`` (and ``spans``; stage 4) head H0 of
    layer L0 over what each text's twins lack (``focus``); samples whose ``positions`` is None add nothing.
    ``shifts``: how far the image rows moved each sample's later tokens."""
    import torch

    if all(p is None for p in positions):
        return None
    a1, a2 = out.attentions[L1][:, H1], out.attentions[L2][:, H2]
    a_s = out.attentions[LS][:, HS] if spans else None
    a_0 = out.attentions[L0][:, H0] if spans and first_layer_span else None
    att, picks, reads = [], [], []
    for i, (p, s) in enumerate(zip(positions, shifts)):
        if p is None:
            continue
        for k in "ABCD":
            att.append(-torch.log(a1[i, p.last[k] + s, p.letter[k] + s] + 1e-6))
            picks.append((i, p.last[k] + s, letter_ids[k]))
            if spans:
                att.append(span_nll(a_s[i], p.last[k] + s, [t + s for t in p.spans[k]]))
                if a_0 is not None:
                    att.append(span_nll(a_0[i], p.last[k] + s, [t + s for t in p.focus[k]]))
                reads.append((i, p.last[k] + s, p.span_ids[k]))
        att.append(-torch.log(a2[i, p.answer_last + s, p.last[p.answer] + s] + 1e-6))
        if spans:
            att.append(span_nll(a_s[i], p.answer_last + s, [t + s for t in p.answer_span]))
            if a_0 is not None:
                att.append(span_nll(a_0[i], p.answer_last + s, [t + s for t in p.answer_focus]))
            reads.append((i, p.answer_last + s, p.answer_span_ids))
    loss = torch.stack(att).mean() + lens_loss(out, L2, picks, lm_head, norm)
    if span_out is not None and reads and SPAN_READ_WEIGHT:
        loss = loss + SPAN_READ_WEIGHT * span_read_loss(span_out, reads, lm_head, norm)
    return loss


def span_read_loss(span_out, reads: list, lm_head, norm):
    """The span read: head HS's own output (:class:`~.lookup_heads.HeadOutput`) at a text's last token, through the
    final norm and ``lm_head``, names that text's other tokens, a one-token text itself (cross-entropy against
    the even spread over them).
    ``reads``: ``(batch row, position, token ids)``."""
    import torch

    h = norm(torch.stack([span_out[i, q] for i, q, _ in reads]))
    logp = torch.log_softmax(lm_head(h).float(), dim=-1)
    return torch.stack([-logp[j, list(ids)].mean() for j, (*_, ids) in enumerate(reads)]).mean()


def span_nll(attn, query: int, keys: list[int]):
    """Cross-entropy of one head's attention row ``attn[query]`` against the even spread over ``keys``."""
    import torch

    return -torch.log(attn[query, keys] + 1e-6).mean()
