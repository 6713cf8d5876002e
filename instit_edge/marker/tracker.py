"""ByteTrack-style multi-object tracking with persistent instance IDs (written here, on purpose).

Why hand-written: ``supervision`` 0.31 removed its ByteTrack; its successor,
the ``trackers`` package, requires ``opencv-python`` -- a second cv2 wheel
beside the ``opencv-contrib-python`` that mediapipe and our KCF/CSRT use,
and two wheels in one ``cv2/`` folder break each other; ``norfair`` requires
numpy < 2. The algorithm is small enough to own: one short module on numpy
and :func:`scipy.optimize.linear_sum_assignment` (with a greedy fallback when
scipy is absent, since scipy is not a base dependency of a device install).

Algorithm (Zhang et al., ByteTrack, ECCV 2022), per frame:

1. predict every track with a constant-velocity Kalman filter on
   ``(cx, cy, w, h)`` (noise scaled with the box size, as in ByteTrack);
2. split detections into high (``score >= high_thresh``) and low
   (``low_thresh <= score < high_thresh``);
3. associate high detections with confirmed tracks (tracked and lost),
   cost ``1 - IoU``, Hungarian, gate ``IoU >= match_iou``; then the
   leftovers by centre distance over the predicted box's diagonal (gate
   ``dist_gate``, similar areas). This addition to ByteTrack matters at low
   frame rates (keyframes, the synthetic world's videos), where an object
   jumps further than its own size before its velocity is known;
4. associate low detections with the tracks still unmatched that were
   tracked in the previous frame (gate ``low_match_iou``): a partly occluded
   or blurred object keeps its ID instead of spawning a new one;
5. tentative tracks take the remaining high detections (IoU, then distance); a tentative track
   becomes confirmed after ``min_hits`` consecutive matches (immediately on
   the tracker's first frame) and only then gets an ID, so one-frame noise
   never consumes a number;
6. unmatched high detections with ``score >= new_thresh`` start tentative
   tracks; confirmed tracks unmatched for more than ``max_lost`` frames are
   removed.

IDs start at 1, increase by one per confirmed track and are never reused in
a tracker's lifetime (``reset()`` forgets tracks but keeps the counter).
The tracker is class-agnostic (a detection's label is carried along).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instit_edge.marker.base import Detection

TENTATIVE, TRACKED, LOST = "tentative", "tracked", "lost"


# --------------------------------------------------------------------------- geometry + assignment


def iou_matrix(a, b) -> np.ndarray:
    """IoU between boxes ``a`` [N, 4] and ``b`` [M, 4] (``x0, y0, x1, y1``)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def center_cost(pred, boxes) -> np.ndarray:
    """Centre distance over the predicted box's diagonal; ``inf`` when the areas differ more than 2.5x."""
    pc = (pred[:, None, :2] + pred[:, None, 2:]) / 2
    bc = (boxes[None, :, :2] + boxes[None, :, 2:]) / 2
    diag = np.hypot(pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1])[:, None]
    dist = np.hypot(*(pc - bc).transpose(2, 0, 1)) / np.maximum(diag, 1e-6)
    pa = ((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]))[:, None]
    ba = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None, :]
    ratio = np.maximum(pa, ba) / np.maximum(np.minimum(pa, ba), 1e-6)
    return np.where(ratio <= 2.5, dist, np.inf)


_LSA = None


def _lsa():
    """scipy's linear_sum_assignment, imported once (False when scipy is missing)."""
    global _LSA
    if _LSA is None:
        try:
            from scipy.optimize import linear_sum_assignment as _LSA
        except ImportError:  # pragma: no cover - scipy comes with the [data] extra
            _LSA = False
    return _LSA


def assign(cost: np.ndarray, max_cost: float) -> list[tuple[int, int]]:
    """Minimum-cost matching with every pair's cost ``<= max_cost`` (Hungarian; greedy without scipy)."""
    if cost.size == 0:
        return []
    lsa = _lsa()
    if not lsa:  # pragma: no cover
        pairs, used_r, used_c = [], set(), set()
        for flat in np.argsort(cost, axis=None):
            r, c = divmod(int(flat), cost.shape[1])
            if cost[r, c] > max_cost:
                break
            if r not in used_r and c not in used_c:
                pairs.append((r, c))
                used_r.add(r)
                used_c.add(c)
        return pairs
    big = max_cost + 1.0
    rows, cols = lsa(np.where(cost <= max_cost, cost, big))
    return [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] <= max_cost]


# --------------------------------------------------------------------------- Kalman filter


_F = np.eye(8)
_F[:4, 4:] = np.eye(4)  # x += v (one frame)
_H = np.eye(4, 8)
_STD_POS, _STD_VEL = 1.0 / 20, 1.0 / 160


def _xyxy_to_z(box) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, 1.0), max(y1 - y0, 1.0)])


def _z_to_xyxy(z) -> np.ndarray:
    cx, cy, w, h = z[:4]
    w, h = max(w, 1.0), max(h, 1.0)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


class _Kalman:
    """Constant-velocity Kalman filter on (cx, cy, w, h, vx, vy, vw, vh), ByteTrack's noise model."""

    def __init__(self, box):
        z = _xyxy_to_z(box)
        self.mean = np.concatenate([z, np.zeros(4)])
        s = np.array([z[2], z[3], z[2], z[3]])
        std = np.concatenate([2 * _STD_POS * s, 10 * _STD_VEL * s])
        self.cov = np.diag(std ** 2)

    def predict(self, freeze_size: bool = False) -> None:
        if freeze_size:
            self.mean[6:8] = 0.0
        w, h = self.mean[2], self.mean[3]
        s = np.array([w, h, w, h])
        q = np.diag(np.concatenate([_STD_POS * s, _STD_VEL * s]) ** 2)
        self.mean = _F @ self.mean
        self.cov = _F @ self.cov @ _F.T + q

    def update(self, box) -> None:
        z = _xyxy_to_z(box)
        w, h = self.mean[2], self.mean[3]
        r = np.diag((_STD_POS * np.array([w, h, w, h])) ** 2)
        s = _H @ self.cov @ _H.T + r
        k = np.linalg.solve(s, _H @ self.cov).T  # cov H^T S^-1 (S symmetric)
        self.mean = self.mean + k @ (z - _H @ self.mean)
        self.cov = self.cov - k @ s @ k.T

    @property
    def box(self) -> np.ndarray:
        return _z_to_xyxy(self.mean)


# --------------------------------------------------------------------------- tracks


@dataclass
class Track:
    """Internal track state; ``id`` is 0 until the track is confirmed."""

    kf: _Kalman
    det: Detection
    state: str = TENTATIVE
    id: int = 0
    hits: int = 1
    first_seen: int = 0
    last_seen: int = 0

    @property
    def predicted(self) -> np.ndarray:
        return self.kf.box


class ByteTracker:
    """Two-stage (high / low score) IoU association with Kalman prediction; see the module doc."""

    def __init__(self, *, high_thresh: float = 0.5, low_thresh: float = 0.1, new_thresh: float = 0.6,
                 match_iou: float = 0.2, low_match_iou: float = 0.5, tentative_iou: float = 0.3,
                 max_lost: int = 30, min_hits: int = 2, dist_gate: float = 1.0):
        if not 0 <= low_thresh <= high_thresh <= 1:
            raise ValueError("need 0 <= low_thresh <= high_thresh <= 1")
        self.high_thresh, self.low_thresh, self.new_thresh = high_thresh, low_thresh, max(new_thresh, high_thresh)
        self.match_iou, self.low_match_iou, self.tentative_iou = match_iou, low_match_iou, tentative_iou
        self.max_lost, self.min_hits = int(max_lost), max(1, int(min_hits))
        self.dist_gate = float(dist_gate)
        self._next_id = 1
        _lsa()  # import scipy now, not inside the first frame's timing
        self.reset()

    # ---- state
    def reset(self) -> None:
        """Forget all tracks (a new video); the ID counter keeps counting, so IDs are never reused."""
        self.tracks: list[Track] = []
        self.frame = -1
        self._started = False

    @property
    def ids_issued(self) -> int:
        return self._next_id - 1

    def _confirm(self, t: Track) -> None:
        t.state = TRACKED
        t.id = self._next_id
        t.first_seen = self.frame  # the first frame that reports this ID
        self._next_id += 1

    # ---- one frame
    def update(self, detections, frame_index: int | None = None) -> list[Detection]:
        """Feed one frame's detections; return the confirmed instances matched in this frame."""
        self.frame = self.frame + 1 if frame_index is None else int(frame_index)
        f = self.frame
        dets = [d for d in detections if d.score >= self.low_thresh]
        high = [d for d in dets if d.score >= self.high_thresh]
        low = [d for d in dets if d.score < self.high_thresh]

        for t in self.tracks:
            t.kf.predict(freeze_size=t.state == LOST)

        confirmed = [t for t in self.tracks if t.state in (TRACKED, LOST)]
        tentative = [t for t in self.tracks if t.state == TENTATIVE]
        matched: list[tuple[Track, Detection]] = []

        # stage 1: high detections <-> confirmed tracks (tracked + lost)
        pairs = self._match(confirmed, high, self.match_iou)
        used_t = {i for i, _ in pairs}
        used_d = {j for _, j in pairs}
        matched += [(confirmed[i], high[j]) for i, j in pairs]
        rest_high = [d for j, d in enumerate(high) if j not in used_d]
        # stage 2: low detections <-> tracks tracked last frame and still unmatched
        rest_tracked = [t for i, t in enumerate(confirmed) if i not in used_t and t.state == TRACKED]
        pairs = self._match(rest_tracked, low, self.low_match_iou, fallback=False)
        matched += [(rest_tracked[i], low[j]) for i, j in pairs]
        done = {id(t) for t, _ in matched}
        for t in confirmed:
            if id(t) not in done and t.state == TRACKED:
                t.state = LOST
        # stage 3: tentative tracks <-> remaining high detections
        pairs = self._match(tentative, rest_high, self.tentative_iou)
        used_d = {j for _, j in pairs}
        keep_tentative = set()
        for i, j in pairs:
            t = tentative[i]
            t.hits += 1
            keep_tentative.add(id(t))
            matched.append((t, rest_high[j]))
            if t.hits >= self.min_hits:
                self._confirm(t)
        self.tracks = [t for t in self.tracks if t.state != TENTATIVE or id(t) in keep_tentative]
        # new tracks
        first = not self._started
        for j, d in enumerate(rest_high):
            if j in used_d or d.score < self.new_thresh:
                continue
            t = Track(_Kalman(d.box), d, first_seen=f, last_seen=f)
            self.tracks.append(t)
            matched.append((t, None))  # marker: created this frame
            if first or self.min_hits <= 1:
                self._confirm(t)
        self._started = True

        out = []
        for t, d in matched:
            if d is not None:
                t.kf.update(d.box)
                t.det = d
                if t.state == LOST:
                    t.state = TRACKED
                t.last_seen = f
            if t.state == TRACKED:
                out.append(self._instance(t))
        # retire lost tracks
        self.tracks = [t for t in self.tracks if not (t.state == LOST and f - t.last_seen > self.max_lost)]
        out.sort(key=lambda i: i.id)
        return out

    def _match(self, tracks, dets, min_iou, fallback: bool = True):
        """IoU matching, then (``fallback``) centre-distance matching of the leftovers."""
        if not tracks or not dets:
            return []
        pred = np.stack([t.predicted for t in tracks])
        boxes = np.array([d.box for d in dets], np.float64)
        pairs = assign(1.0 - iou_matrix(pred, boxes), 1.0 - min_iou)
        if not fallback or self.dist_gate <= 0 or len(pairs) == min(len(tracks), len(dets)):
            return pairs
        ti = [i for i in range(len(tracks)) if i not in {p[0] for p in pairs}]
        di = [j for j in range(len(dets)) if j not in {p[1] for p in pairs}]
        cost = center_cost(pred[ti], boxes[di])
        return pairs + [(ti[a], di[b]) for a, b in assign(cost, self.dist_gate)]

    def _instance(self, t: Track) -> Detection:
        x0, y0, x1, y1 = t.det.box
        box = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))
        return Detection(box, t.det.mask, t.det.label, float(t.det.score), id=t.id, first_seen=t.first_seen,
                         last_seen=t.last_seen)

    def active_ids(self) -> list[int]:
        """IDs of confirmed tracks still alive (tracked or briefly lost)."""
        return sorted(t.id for t in self.tracks if t.id)
