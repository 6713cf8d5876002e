"""Supervising counting: one mark per instance, and a head that spreads evenly over the marks and a sink.

The default model answered "1" to every count question after stage 2f (101 of 148 right on a 692-question
bench: the prior). Its image rows carry, per patch, the covering instance's ID, colour, shape and position:
a head attending to every red patch reads a mixture weighted by area, and how many *distinct* instances it
holds is not linear in it (eleventh session: linear and MLP probes on that head's output, and on the residual
after every layer, at the position that predicts the count, scored the prior, 0.72). Three heads are told what
to do instead, inside the LLM (the weights stay a plain Llama):

- head ``HF`` of layer ``LF``, at every image row that covers an instance (the instance at the patch centre,
  what the row's code says), attends to the earlier rows of the same instance, or, at the instance's first row
  in raster order, to position 0 (the sink). What it writes then marks each instance's first row apart from
  its other rows: one mark per instance.
- head ``HC`` of layer ``LC``, at the position that predicts a count's number, spreads its attention evenly
  over position 0 and the first row of every counted instance: the sink's share, 1 / (n + 1), is the count.
  A logit lens after layer LC and that head's own output (through the final norm and ``lm_head``, among the
  numbers ``0``-``7``, weight ``COUNT_READ_WEIGHT``) read the number there, as the lookup's head read does.
- head ``HQ`` of layer ``LQ`` (the lookup's hop to the question's ID) hops, at that position, to the question's
  word for what is counted (``red`` / ``stars``), so head HC's query knows which marks to count (``WHAT_HOP``).

Status: an experiment, off by default (``--count-steps 0``). Four 400-step runs from the committed 2f weights
(twelfth session) learned the marks (0.94-0.96 of head HF's attention on its target) and the hop (0.999), but
head HC spread over every instance's mark, not only the counted ones (sink share 0.54 / 0.53 / 0.49 / 0.46 for
counts 0-3): the answer stayed "1" (count 68.2 on seed 4242, unchanged) and image / video MC fell (70.4 / 47.7
-> 68.2 / 43.0 on seed 4242). ``docs/experiments/count_probe.py`` measures it; the model card has the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..prompting import IMAGE_TOKEN, render_chat
from .letter_heads import token_at, token_offsets
from .lookup_heads import _COUNT, HQ, LQ

LF, HF = 0, 0  # an instance's image row -> its earlier rows, or the sink at its first row
LC, HC = 2, 0  # a count's answer -> the sink and each counted instance's first row, evenly
COUNT_READ_WEIGHT = 1.0
WHAT_HOP = True  # head HQ of layer LQ (the lookup's hop to the ID) also hops to what a count question counts
COUNT_WEIGHT = 4.0  # the whole count term (marks, count head, lens, head read) against the rest of the stage
MAX_COUNT = 7  # data.synth asks counts of 0..7


@dataclass
class CountPositions:
    """Token positions in the encoded ids (the ``<image>`` placeholder still one token) and image rows."""

    image_pos: int  # the ``<image>`` placeholder (the rows start here once spliced)
    rows: tuple[int, ...]  # image rows whose patch centre lies on an instance, raster order
    earlier: tuple[tuple[int, ...], ...]  # per row of ``rows``: the earlier rows of its instance; () = its first
    answer_pred: int | None = None  # a count question: the position that predicts the number; None: no count
    firsts: tuple[int, ...] = ()  # the first row of every counted instance
    answer_token: int | None = None  # the number's token
    candidates: tuple[int, ...] = ()  # the tokens of " 0" .. " 7" (the number's among them)
    what_token: int | None = None  # the question's first word of what is counted (``red`` / ``stars``)


def number_tokens(tokenizer) -> tuple[int, ...]:
    """The tokens of the numbers 0..MAX_COUNT as they follow ``ASSISTANT:``."""
    from .oracle_rows import _token_ids

    return tuple(_token_ids(tokenizer, f" {n}")[0] for n in range(MAX_COUNT + 1))


def count_positions(sample, input_ids: list[int], tokenizer, template: str, instances) -> CountPositions | None:
    """Where the count heads are supervised in one image sample (``instances``: the world's
    :class:`~.lookup_heads.InstanceRows`): every image sample marks its instances' first rows; a count question
    answered by its number (``2`` / ``2 D``) adds the count head. None: no image, or not in the world."""
    if sample.image is None or len(sample.turns) != 1:
        return None
    img = [i for i, t in enumerate(input_ids) if t == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)]
    centre = instances.centres(sample.image)
    if len(img) != 1 or centre is None:
        return None
    rows = tuple(int(r) for r in range(len(centre)) if centre[r] > 0)
    seen: dict[int, list[int]] = {}
    earlier = []
    for r in rows:
        k = int(centre[r])
        earlier.append(tuple(seen.get(k, ())))
        seen.setdefault(k, []).append(r)
    out = CountPositions(img[0], rows, tuple(earlier))
    user, ans = sample.turns[0]
    counted = instances.counted(sample.image, user) if _COUNT.search(user) else None
    number = ans.split(" ", 1)[0]
    if counted is None or not number.isdigit() or int(number) != len(counted) or int(number) > MAX_COUNT:
        return out
    if any(k not in seen for k in counted):  # an instance under no patch centre: it has no mark to count
        return out
    text = render_chat(template, [("user", f"{IMAGE_TOKEN}\n{user}"), ("assistant", ans)],
                       add_generation_prompt=False)
    offs = token_offsets(tokenizer, text, input_ids, "count heads")
    first = token_at(offs, text.rindex(ans), "count heads")
    cands = number_tokens(tokenizer)
    if int(input_ids[first]) != cands[int(number)]:
        return out
    out.answer_pred, out.answer_token, out.candidates = first - 1, int(input_ids[first]), cands
    out.firsts = tuple(seen[k][0] for k in sorted(counted))
    out.what_token = token_at(offs, text.index(user) + _COUNT.search(user).start("what"), "count heads")
    return out


def count_head_loss(out, positions: list, shifts: list[int], lm_head=None, norm=None, head_out=None):
    """The count heads' terms for a batch (``out`` with attentions; hidden states for the lens); samples whose
    ``positions`` is None add nothing. ``shifts``: how far the image rows moved each sample's later tokens;
    ``head_out``: head HC's own output (:class:`~.lookup_heads.HeadOutput` of layer LC, head HC)."""
    import torch
    import torch.nn.functional as F

    from .letter_heads import lens_loss

    if all(p is None for p in positions):
        return None
    af, ac, aq = out.attentions[LF][:, HF], out.attentions[LC][:, HC], out.attentions[LQ][:, HQ]
    terms = []
    for i, p in enumerate(positions):
        if p is None or not p.rows:
            continue
        q = torch.tensor(p.rows) + p.image_pos
        target = torch.zeros(len(p.rows), af.shape[-1], dtype=torch.bool)
        for j, e in enumerate(p.earlier):
            if e:
                target[j, torch.tensor(e) + p.image_pos] = True
            else:
                target[j, 0] = True
        mass = (af[i, q] * target.to(af.device)).sum(-1)
        terms.append(-torch.log(mass + 1e-6).mean())
    counts = [(i, p.answer_pred + s, p) for i, (p, s) in enumerate(zip(positions, shifts))
              if p is not None and p.answer_pred is not None]
    for i, q, p in counts:
        t = torch.tensor((0,) + tuple(f + p.image_pos for f in p.firsts), device=ac.device)
        terms.append(-torch.log(ac[i, q, t] + 1e-6).mean())  # evenly: each gets 1 / (n + 1) at the optimum
        if WHAT_HOP and p.what_token is not None:  # the lookup's question hop brings what is counted
            terms.append(-torch.log(aq[i, q, p.what_token + (q - p.answer_pred)] + 1e-6))
    if not terms:
        return None
    loss = torch.stack(terms).mean()
    if not counts or lm_head is None:
        return COUNT_WEIGHT * loss
    loss = loss + lens_loss(out, LC + 1, [(i, q, p.answer_token) for i, q, p in counts], lm_head, norm)
    if head_out is not None and COUNT_READ_WEIGHT:
        logits = lm_head(norm(torch.stack([head_out[i, q] for i, q, _ in counts]))).float()
        read = torch.stack([F.cross_entropy(logits[j, list(p.candidates)][None],
                                            torch.tensor([p.candidates.index(p.answer_token)]))
                            for j, (*_, p) in enumerate(counts)]).mean()
        loss = loss + COUNT_READ_WEIGHT * read
    return COUNT_WEIGHT * loss
