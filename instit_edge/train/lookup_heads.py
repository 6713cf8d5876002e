"""Supervising the instance lookup: where the answer looks for "[k]" and for instance k's image rows.

The default model learns "What is the color of [2]?" -> ``white`` in a short prompt (0.67 colour, 0.94
position on a world it never saw) but not inside the official Inst-IT prompt, where the same lookup scores
0.16 (colour) after stage 2c: the question sits 130 tokens of instructions away from the image, and the small
LLM does not find the two hops alone. As the letter step (:mod:`.letter_heads`), the hops are told:

- head ``HQ`` of layer ``LQ``, at the position that predicts the answer's first token, attends to the token
  of the question that spells the instance's ID (the ``2`` of ``[2]``);
- head ``HP`` of layer ``LP``, at the same position, puts its attention on the image rows of instance k
  (the patches its ground-truth mask covers, from the world's masks);
- after layer ``LP`` (the final norm + ``lm_head``, a logit lens, weight ``LENS_WEIGHT``), the same position
  predicts the answer's first token. The seventh session ran the two attention terms alone: the heads were
  told where to look, the MC choice stayed at 0.30 (the letter step had the same symptom until its lens term
  made the value path form, 0.26 -> 0.81);
- head HP's own output (through the final norm and ``lm_head``) picks the answer's first token among the
  asked attribute's words (weight ``HEAD_READ_WEIGHT``): the head read. The eighth session found that head
  attending to the right rows (0.74) while its output picked the right option at chance (0.33), and traced it
  to the rows: half the instances of the 128 px world lay mostly under their ID label.

Only questions that name exactly one instance are supervised (colour, shape, position and the short lookups);
the others add nothing, unless ``multi`` is asked for (stage 2e, the ninth session): then three questions about
several instances are supervised too, at the answer position that decides between the options (the first
token where the right answer differs from every other option, e.g. ``left`` in ``to the left of``):

- a relation (``Complete the sentence: [a] is ___ [b].``): head HQ attends to ``a``'s ID and head ``HQB`` of
  layer ``LQ`` to ``b``'s; head HP attends to ``a``'s rows and head ``HPB`` of layer ``LP`` to ``b``'s (the
  comparison is left to the last layer: no lens);
- an extreme (``Which instance is the leftmost in the image?``): head HP attends to the winner's rows and the
  lens after layer LP reads the winner's ID digit (the rows carry it), as in the one-instance lookup;
- a count (``How many red instances are there in the image?``): head HP attends to the rows of every counted
  instance (none: no term); the number is left to the last layer (no lens).

The weights stay a plain Llama: nothing here changes the architecture.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InstitError
from ..prompting import IMAGE_TOKEN, render_chat
from .letter_heads import letter_answer, token_at, token_offsets

LQ, HQ = 1, 1  # answer start -> the ID in the question
LP, HP = 2, 1  # answer start -> the instance's image rows
LENS_WEIGHT = 1.0  # 0 turns the logit lens after layer LP off (the seventh session's stage 2d)
HEAD_READ_WEIGHT = 1.0  # the head-read term (see :func:`lookup_head_loss`); 0 turns it off
HQB, HPB = 2, 2  # a relation's second instance: its ID (layer LQ) and its rows (layer LP)
_ONE_ID = re.compile(r"(?P<cat>color|shape) of \[(?P<k>\d+)\]\?|Where is \[(?P<kp>\d+)\] located")
_RELATION = re.compile(r"Complete the sentence: \[(?P<a>\d+)\] is ___ \[(?P<b>\d+)\]\.")
_EXTREME = re.compile(r"Which instance is the (?:leftmost|rightmost|topmost|bottommost) in the image\?")
_WINNER = re.compile(r"\[(\d+)\]")
_COUNT = re.compile(r"How many (?P<what>[a-z ]+?) are there in the image\?")


@dataclass
class LookupPositions:
    """Token positions in the encoded ids (the ``<image>`` placeholder still one token) and image rows."""

    id_token: int | None  # the token of the question covering the ID's first digit; None: no ID asked (extreme)
    answer_pred: int  # the position that predicts the answer's first token
    image_pos: int  # the ``<image>`` placeholder (the rows start here once spliced)
    rows: list[int]  # row indices (raster order over the patch grid) of the asked instance
    answer_token: int | None  # the answer's first token, for the lens after layer LP; None when the answer
    # starts by repeating the ID (an open-ended ``[2] is white.``: nothing looked up to read there)
    candidates: tuple[int, ...] = ()  # the first tokens of every word of the asked attribute (the answer's
    # among them), among which head HP's own output must read the answer; empty: no head-read term
    id_token_b: int | None = None  # a relation's second ID (head HQB); None: no second instance
    rows_b: tuple[int, ...] = ()  # a relation's second instance's rows (head HPB)


class InstanceRows:
    """Which image rows (patches of a ``grid`` x ``grid`` raster) each instance of a world's image covers."""

    def __init__(self, world: Path, grid: int, min_cover: float = 0.25):
        self.world, self.grid, self.min_cover = Path(world), grid, min_cover
        gt = json.loads((self.world / "ground_truth.json").read_text())
        self.masks = {str((self.world / e["image_path"]).resolve()): self.world / e["mask_path"]
                      for part in ("dataset", "bench") for e in gt[part]["images"].values()}
        self.instances = {str((self.world / e["image_path"]).resolve()): e["instances"]
                          for part in ("dataset", "bench") for e in gt[part]["images"].values()}
        self._cache: dict[str, np.ndarray] = {}

    def counted(self, image: str | Path, question: str) -> list[int] | None:
        """The IDs a count question (``How many red instances`` / ``How many stars``) counts; None when the
        question is not one, or the image is not in the world."""
        from ..data.synth import _plural

        inst = self.instances.get(str(Path(image).resolve()))
        m = _COUNT.search(question)
        if inst is None or not m:
            return None
        what = m.group("what")
        return [int(k) for k, v in inst.items() if what in (f"{v['color']} instances", _plural(v["shape"]))]

    def _patches(self, image: str | Path) -> np.ndarray | None:
        """[grid * grid, pixels per patch] instance ids of the image's mask, raster order; None: not in the world."""
        from PIL import Image

        key = str(Path(image).resolve())
        if key not in self.masks:
            return None
        if key not in self._cache:
            m = np.asarray(Image.open(self.masks[key]))
            g = self.grid
            if m.shape[0] % g or m.shape[1] % g:
                raise InstitError(f"lookup heads: mask {m.shape[:2]} is not a multiple of the {g}x{g} grid")
            self._cache[key] = m.reshape(g, m.shape[0] // g, g, m.shape[1] // g).transpose(0, 2, 1, 3).reshape(
                g * g, -1)
        return self._cache[key]

    def centres(self, image: str | Path) -> np.ndarray | None:
        """[grid * grid] the instance at each patch's centre pixel (0: background), what the row's code carries
        (``default_model._patch_targets``); None: the image is not in the world."""
        patches = self._patches(image)
        if patches is None:
            return None
        side = int(round(patches.shape[1] ** 0.5))
        return patches[:, (side // 2) * side + side // 2]

    def rows(self, image: str | Path, instance: int) -> list[int]:
        """Patches where the instance covers at least ``min_cover`` of the pixels; else its best-covered patch."""
        patches = self._patches(image)
        if patches is None:
            return []
        cover = (patches == instance).mean(1)
        sel = [int(i) for i in np.nonzero(cover >= self.min_cover)[0]]
        if not sel and cover.max() > 0:
            sel = [int(cover.argmax())]
        return sel


def attribute_candidates(tokenizer, attribute: str) -> tuple[int, ...]:
    """The distinct first tokens of the words an attribute question can be answered with (``color``,
    ``shape``, ``position``), as they follow ``ASSISTANT:``."""
    from ..data.synth import position_name
    from ..drawing import COLORS, SHAPES
    from .oracle_rows import _token_ids

    words = {"color": list(COLORS), "shape": list(SHAPES),
             "position": sorted({position_name(x, y, 3, 3) for x in (0.5, 1.5, 2.5) for y in (0.5, 1.5, 2.5)})}
    if attribute not in words:
        raise InstitError(f"lookup heads: no candidate words for the attribute {attribute!r}")
    return tuple(dict.fromkeys(_token_ids(tokenizer, " " + w)[0] for w in words[attribute]))


def lookup_positions(sample, input_ids: list[int], tokenizer, template: str,
                     instances: InstanceRows, multi: bool = False, oe_word: bool = False) -> LookupPositions | None:
    """Where the lookup heads are supervised in one image sample naming a single instance; None otherwise.
    With ``multi``, relation, extreme and count MC questions too (:func:`multi_positions`). An open-ended answer
    (``[2] is orange.``) is supervised where it starts (``[``), or with ``oe_word`` (stage 4) where the
    attribute's word is predicted (``orange``), with the head read there too."""
    if sample.image is None or len(sample.turns) != 1:
        return None
    user, ans = sample.turns[0]
    m = _ONE_ID.search(user)
    if not m:
        return multi_positions(sample, input_ids, tokenizer, template, instances) if multi else None
    k = int(m.group("k") or m.group("kp"))
    rows = instances.rows(sample.image, k)
    if not rows:
        return None
    text = render_chat(template, [("user", f"{IMAGE_TOKEN}\n{user}"), ("assistant", ans)],
                       add_generation_prompt=False)
    offs = _offsets(tokenizer, text, input_ids)
    u0 = text.index(user)
    digit = u0 + m.start("k" if m.group("k") else "kp")
    a0 = text.rindex(ans)
    img = [i for i, t in enumerate(input_ids) if t == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)]
    if len(img) != 1:
        return None
    first = _token_at(offs, a0)
    read = None if ans.lstrip().startswith("[") else int(input_ids[first])
    cands = attribute_candidates(tokenizer, m.group("cat") or "position") if read is not None or oe_word else ()
    if read is None and oe_word:  # "[2] is orange.": supervised where the attribute's word is predicted
        end = _token_at(offs, a0 + len(ans.rstrip()) - 1)
        word = next((i for i in range(first, end + 1) if input_ids[i] in cands), None)
        if word is not None:
            first, read = word, int(input_ids[word])
    if read not in cands:  # an answer spelled unlike the attribute's words: no head-read term
        cands = ()
    return LookupPositions(_token_at(offs, digit), first - 1, img[0], rows, read, cands)  # first - 1 predicts the answer


def _offsets(tokenizer, text: str, input_ids: list[int]) -> list:
    return token_offsets(tokenizer, text, input_ids, "lookup heads")


def _token_at(offsets, ch: int) -> int:
    return token_at(offsets, ch, "lookup heads")


def multi_positions(sample, input_ids: list[int], tokenizer, template: str,
                    instances: InstanceRows) -> LookupPositions | None:
    """The supervision of a relation, extreme or count MC question answered ``<option text> <letter>`` (see
    the module's docstring); None for any other sample, for a count of 0, or where an instance covers no patch."""
    from .letter_heads import _OPTION

    user, ans = sample.turns[0]
    rel, ext, cnt = _RELATION.search(user), _EXTREME.search(user), _COUNT.search(user)
    opts = dict(_OPTION.findall(user + "\n"))
    if not (rel or ext or cnt) or len(opts) != 4 or ans not in {letter_answer(v, k) for k, v in opts.items()}:
        return None
    right = ans.rsplit(" ", 1)[1]
    place = deciding_place(user, ans, opts, input_ids, tokenizer, template)
    if place is None:
        return None
    text, offs, first, decide, img = place
    ids = list(input_ids)
    pred = first + decide - 1  # the position that predicts the deciding token
    u0 = text.index(user)
    if rel:
        rows_a, rows_b = instances.rows(sample.image, int(rel.group("a"))), instances.rows(sample.image,
                                                                                            int(rel.group("b")))
        if not rows_a or not rows_b:
            return None
        return LookupPositions(_token_at(offs, u0 + rel.start("a")), pred, img, rows_a, None,
                               id_token_b=_token_at(offs, u0 + rel.start("b")), rows_b=tuple(rows_b))
    if cnt:  # every counted instance's rows; a count of 0 is left alone
        rows = sorted({r for k in instances.counted(sample.image, user) or [] for r in instances.rows(sample.image, k)})
        return LookupPositions(None, pred, img, rows, None) if rows else None
    win = _WINNER.search(opts[right])
    rows = instances.rows(sample.image, int(win.group(1))) if win else []
    if not rows:
        return None
    return LookupPositions(None, pred, img, rows, int(ids[first + decide]))


def deciding_place(user: str, ans: str, opts: dict, input_ids: list[int], tokenizer, template: str):
    """Where an MC answer ``<option text> <letter>`` is decided: ``(rendered chat, token offsets, the answer's first
    token, how many tokens after it the right answer first differs from every other option, the ``<image>``
    placeholder)``; None where the answers never differ or the chat has no single placeholder."""
    def render(a: str) -> str:
        return render_chat(template, [("user", f"{IMAGE_TOKEN}\n{user}"), ("assistant", a)],
                           add_generation_prompt=False)

    right = ans.rsplit(" ", 1)[1]
    text = render(ans)
    ids, offs = list(input_ids), _offsets(tokenizer, text, input_ids)
    first = _token_at(offs, text.rindex(ans))
    decide = 0
    for k, v in opts.items():
        if k == right:
            continue
        other = tokenizer(render(letter_answer(v, k)))["input_ids"][first:]
        mine = ids[first:]
        d = next((i for i, (x, y) in enumerate(zip(mine, other)) if x != y), min(len(mine), len(other)))
        decide = max(decide, d)
    img = [i for i, t in enumerate(ids) if t == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)]
    if first + decide >= len(ids) or len(img) != 1:
        return None
    return text, offs, first, decide, img[0]


class HeadOutput:
    """Head ``HP`` of layer ``LP``'s (or the given head's) own contribution to the residual stream, kept by a hook
    on ``o_proj`` (its slice of the attention output times its columns of ``o_proj``): what the head read."""

    def __init__(self, language_model, layer: int = LP, head: int = HP):
        self.attn, self.head = language_model.layers[layer].self_attn, head
        self._x = None
        self._hook = self.attn.o_proj.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self._x = inputs[0]

    def value(self):
        """[batch, positions, hidden] of the last forward pass."""
        if self._x is None:
            raise InstitError("lookup heads: no forward pass has run since the head output hook was added")
        d = self.attn.head_dim
        cols = slice(self.head * d, (self.head + 1) * d)
        return self._x[..., cols] @ self.attn.o_proj.weight[:, cols].T

    def close(self) -> None:
        self._hook.remove()


def lookup_head_loss(out, positions: list, shifts: list[int], lm_head=None, norm=None, head_out=None):
    """The two attention terms for a batch (``out`` with attentions), plus the logit lens after layer ``LP``
    when ``lm_head`` and ``norm`` are given (``out`` with hidden states); samples whose ``positions`` is None
    add nothing. ``shifts``: how far the image rows moved each sample's later tokens.

    With ``head_out`` (:meth:`HeadOutput.value`), the *head read*: head HP's own output, through the final
    norm and ``lm_head``, must pick the answer among the asked attribute's words (weight ``HEAD_READ_WEIGHT``).
    The eighth session measured why: with 0.74 of its attention on the right rows, that head's output picked
    the right option 0.33 of the time (chance 0.25): the value path of the lookup never formed, and the lens
    on the whole residual let the model fit priors instead.
    """
    import torch
    import torch.nn.functional as F

    from .letter_heads import lens_loss

    if all(p is None for p in positions):
        return None
    aq, ap = out.attentions[LQ][:, HQ], out.attentions[LP][:, HP]
    terms = []
    for i, (p, s) in enumerate(zip(positions, shifts)):
        if p is None:
            continue
        q = p.answer_pred + s
        if p.id_token is not None:
            terms.append(-torch.log(aq[i, q, p.id_token + s] + 1e-6))  # the question follows the image: shifted
        rows = torch.tensor(p.rows, device=ap.device) + p.image_pos  # the rows start at the placeholder
        terms.append(-torch.log(ap[i, q, rows].sum() + 1e-6))
        if p.id_token_b is not None:  # a relation's second instance
            terms.append(-torch.log(out.attentions[LQ][i, HQB, q, p.id_token_b + s] + 1e-6))
        if p.rows_b:
            rows_b = torch.tensor(p.rows_b, device=ap.device) + p.image_pos
            terms.append(-torch.log(out.attentions[LP][i, HPB, q, rows_b].sum() + 1e-6))
    loss = torch.stack(terms).mean()
    if lm_head is None:
        return loss
    picks = [(i, p.answer_pred + s, p.answer_token) for i, (p, s) in enumerate(zip(positions, shifts))
             if p is not None and p.answer_token is not None]
    if picks and LENS_WEIGHT:
        loss = loss + LENS_WEIGHT * lens_loss(out, LP + 1, picks, lm_head, norm)  # [LP + 1]: layer LP's output
    reads = [(i, p.answer_pred + s, p) for i, (p, s) in enumerate(zip(positions, shifts))
             if p is not None and p.candidates]
    if head_out is not None and reads and HEAD_READ_WEIGHT:
        h = norm(torch.stack([head_out[i, q] for i, q, _ in reads]))
        logits = lm_head(h).float()
        read = torch.stack([F.cross_entropy(logits[j, list(p.candidates)][None],
                                            torch.tensor([p.candidates.index(p.answer_token)]))
                            for j, (*_, p) in enumerate(reads)]).mean()
        loss = loss + HEAD_READ_WEIGHT * read
    return loss
