"""Lip stage: decoded 25 fps RGB frames -> the grayscale mouth crops AV-HuBERT reads.

The convention LRS2/LRS3 lip-reading models are trained on, as auto_avsr prepares LRS3
(preparation/detectors/retinaface/video_process.py; Llama-AVSR, MoME's predecessor, follows it); where AV-HuBERT's
own preparation script (avhubert/preparation/align_mouth.py) differs, it is said:

1. 68 landmarks per frame (face-alignment's FAN, iBUG 300-W point order) on one face tracked through the clip: the
   largest face first, then in each frame the face nearest the previous one, so a second person cannot take over.
2. Frames with no face get landmarks linearly interpolated from the nearest frames that have one; frames before the
   first or after the last detection copy it.
3. Landmarks are smoothed over time with a centred window: frame t takes the mean of frames t-m..t+m, m = window // 2
   (13 frames for the usual window of 12), m shrinking at the clip's ends so the window stays centred; the mean shape
   is then moved so its centroid is frame t's own, so smoothing steadies rotation and scale but not position.
   (AV-HuBERT's script averages frames t..t+11 instead and reuses the last transform for the final 11 frames.)
4. A similarity transform (rotation, uniform scale, translation) fitted by least squares takes the smoothed
   STABLE_POINTS onto the same points of a mean face in a 256 x 256 reference frame. (auto_avsr fits the same model
   with OpenCV's least-median LMEDS, which only differs on outliers; AV-HuBERT's script uses least squares on points
   33, 36, 39, 42, 45.)
5. The ROI is the 96 x 96 square of that reference frame centred on the transformed mouth (points 48-67), grayscale.
   The encoder sees its centre 88 x 88, as (x / 255 - 0.421) / 0.165.

Only the 96 x 96 square is sampled (bilinear, black outside the frame): the same pixels as warping the whole frame into
the reference frame and cutting, except that a square reaching past the reference frame's edge is not clipped here,
so every ROI is 96 x 96. Grayscale is taken after sampling; both are linear, so the order only moves rounding.

The mean face that ships (data/mean_face_68.csv) is a documented stand-in for the 20words_mean_face.npy that
LRW/LRS3 models are trained with: see data/README.md; LipConfig.mean_face takes the original when you have it.

Notation for shapes: T frames, H x W frame pixels, P = 68 landmarks, N faces in a frame, S = 96 ROI side,
C = 88 crop side.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .rng import isolated

if TYPE_CHECKING:
    import torch

NUM_LANDMARKS = 68  # iBUG 300-W points: 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 lips
STABLE_POINTS = (28, 33, 36, 39, 42, 45, 48, 54)  # nose ridge and tip, eye corners, mouth corners
MOUTH_POINTS = slice(48, 68)  # outer (48-59) and inner (60-67) lip contour
REFERENCE_SIZE = 256  # side of the mean face's reference frame, pixels
ROI_SIZE = 96  # S: side of the mouth ROI, pixels of the reference frame
CROP_SIZE = 88  # C: side of the centre crop the encoder sees, (96 - 88) / 2 = 4 pixels off each edge
SMOOTH_WINDOW = 12  # frames of landmark smoothing: 0.48 s at 25 fps
PIXEL_MEAN = 0.421  # mean of x / 255 over LRS3 mouth ROIs
PIXEL_STD = 0.165  # standard deviation of x / 255 over LRS3 mouth ROIs
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma of RGB, as OpenCV's RGB2GRAY
MISSING_WARN_FRACTION = 0.5  # warn when more than this share of a clip's frames had no face
DETECTORS = ("sfd", "blazeface")  # face-alignment's S3FD (accurate, any size) | BlazeFace (fast, frontal faces)
DETECT_BATCH = 16  # frames per detection and landmark batch
DETECT_BATCH_CPU_SFD = 2  # with sfd on the CPU, where batching gains nothing (0.8 s a frame at 640 x 360 on 2 cores
# whatever the batch): small batches let a stop (Ctrl-C) take effect within a second or two. (blazeface, ~40 ms a
# frame there, is 2-3x slower a frame in batches of 2 than of 16, and keeps 16.)
DETECT_MAX_SIDE = 640  # frames are scaled down to this longest side for face detection only (bounds its memory)
MIN_DETECT_SIDE = 32  # pixels a side face detection needs: S3FD halves a frame five times (2**5), and fails on a
# smaller one; a face in a smaller frame has no lips to read, so it holds none for either detector
TRACK_GATE = 1.0  # a face continues the track if its centre is within this many box sides of the last box's centre
TRACK_RESET = 25  # frames (1 s at 25 fps) with no face near the track before the largest face starts a new one
MEAN_FACE_FILE = "data/mean_face_68.csv"  # inside the mome_cli package; see data/README.md


class NoFaceError(RuntimeError):
    """No frame of the clip has a face: there is nothing to read lips from."""


class FramesTooSmall(NoFaceError):
    """The frames are too small for face detection (see too_small_to_detect): no face can be found in them."""


class Stopped(Exception):
    """The work was asked to stop (its `stop` event was set) because its result is no longer wanted."""


def check_stop(stop) -> None:
    """Raise Stopped if the threading.Event `stop` (or None: never) is set; called between batches of long work."""
    if stop is not None and stop.is_set():
        raise Stopped


@dataclass(frozen=True)
class LipConfig:
    detector: str = "sfd"  # face detector, one of DETECTORS
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N | mps
    batch_size: int | None = None  # frames per face-detection and landmark batch; None: the detector's own
    smooth_window: int = SMOOTH_WINDOW  # frames of landmark smoothing; 0 or 1 turns it off
    mean_face: str | None = None  # a (68, 2) mean face in a 256 x 256 frame (.npy or .csv); None: the bundled one
    flip_input: bool = False  # also run FAN on the mirrored face and average the two (twice the landmark cost)

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.smooth_window < 0:
            raise ValueError(f"smooth_window must be >= 0, got {self.smooth_window}")


@dataclass
class LipResult:
    rois: np.ndarray  # (T, S, S) uint8 grayscale mouth ROIs
    n_missing: int  # frames with no face, whose landmarks were interpolated
    warning: str | None = None  # set when more than half the frames had no face


def _check_frames(frames) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames, or a ValueError naming what came instead."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if len(frames) == 0:
        raise ValueError("no frames")
    return frames


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _detection_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) of H x W frames as face detection sees them: scaled down to DETECT_MAX_SIDE on their longer side."""
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def too_small_to_detect(height: int, width: int) -> str | None:
    """Why no face can be found in H x W frames, as words to follow "frames of W x H pixels are", or None if one can."""
    h, w = _detection_size(height, width)
    if min(h, w) >= MIN_DETECT_SIDE:
        return None
    scaled = f" once the longer is scaled to {DETECT_MAX_SIDE}" if (h, w) != (height, width) else ""
    return f"too small to find a face in (face detection needs {MIN_DETECT_SIDE} pixels a side{scaled})"


# -- face tracking -----------------------------------------------------------------------------------------------


def _centres(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) boxes x1, y1, x2, y2 -> (N, 2) centres."""
    return (boxes[:, :2] + boxes[:, 2:4]) / 2


class FaceTracker:
    """Follows one face through a video given in pieces: per-frame face boxes in, one box a frame out.

    The track starts on the largest face; each later frame takes the face whose centre is nearest the last tracked
    box's, if within TRACK_GATE box sides of it. After TRACK_RESET frames without such a face (a cut, the speaker gone)
    the track starts again on the largest face. The state carries from one piece to the next, so a video read in
    chunks is tracked as if it were read whole.
    """

    def __init__(self):
        self.last: np.ndarray | None = None  # (4,) the last tracked box
        self.lost = 0  # frames since it was seen

    def update(self, candidates: list) -> np.ndarray:
        """Per-frame face boxes (each (N, 4+) x1, y1, x2, y2[, score], N may be 0) -> (T, 4), NaN rows where the
        tracked face was not found."""
        tracked = np.full((len(candidates), 4), np.nan)
        for t, faces in enumerate(candidates):
            faces = np.asarray(faces, dtype=np.float64)
            faces = faces.reshape(len(faces), -1)[:, :4] if faces.size else np.empty((0, 4))  # (N, 4)
            if len(faces) == 0:
                self.lost += 1
                continue
            last = self.last
            if last is None or self.lost >= TRACK_RESET:
                sides = faces[:, 2:4] - faces[:, :2]  # (N, 2) widths, heights
                pick = int(np.argmax(sides[:, 0] * sides[:, 1]))
            else:
                distance = np.linalg.norm(_centres(faces) - _centres(last[None]), axis=1)  # (N,)
                pick = int(np.argmin(distance))
                if distance[pick] > TRACK_GATE * max(last[2] - last[0], last[3] - last[1]):
                    self.lost += 1
                    continue
            tracked[t] = self.last = faces[pick]
            self.lost = 0
        return tracked


def track_faces(candidates: list) -> np.ndarray:
    """FaceTracker over a whole video at once: (T, 4) one box a frame, NaN rows where the face was not found."""
    return FaceTracker().update(candidates)


def _frame_boxes(boxes, T: int) -> np.ndarray:
    """Given boxes, one (4,) for every frame or (T, 4) with NaN rows for frames without a face -> (T, 4)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape == (4,):
        return np.tile(boxes, (T, 1))
    if boxes.shape != (T, 4):
        raise ValueError(f"boxes must be (4,) or (T, 4) = ({T}, 4) as x1, y1, x2, y2, got shape {boxes.shape}")
    return boxes


# -- landmarks ---------------------------------------------------------------------------------------------------


class LandmarkDetector:
    """face-alignment's face detector and 2-D FAN landmark network, one tracked face per frame.

    face-alignment loads its weights from torch hub's cache ($TORCH_HOME/hub/checkpoints), downloading them there
    the first time.
    """

    def __init__(self, device: str = "auto", detector: str = "sfd", flip_input: bool = False):
        LipConfig(detector=detector, device=device)  # validates both
        try:
            import face_alignment
        except ImportError as e:
            raise ImportError(f"the lip stage needs face-alignment (pip install 'face-alignment>=1.4'): {e}") from e
        self.device = resolve_device(device)
        self.detector = detector
        self.batch_size = DETECT_BATCH_CPU_SFD if self.device == "cpu" and detector == "sfd" else DETECT_BATCH
        fa = face_alignment.FaceAlignment
        landmarks_type = getattr(face_alignment.LandmarksType, "TWO_D", None)  # named _2D before 1.4
        if landmarks_type is None:
            landmarks_type = face_alignment.LandmarksType._2D
        options = dict(device=self.device, face_detector=detector, flip_input=flip_input)
        if "compile" in inspect.signature(fa.__init__).parameters:
            options["compile"] = False  # 1.5 compiles FAN by default: a long first run and a cache in ~/.cache
        with isolated():  # its networks draw their first weights from torch's generator, in a reader thread
            self.fa = fa(landmarks_type, **options)

    @classmethod
    def from_config(cls, config: LipConfig) -> LandmarkDetector:
        return cls(device=config.device, detector=config.detector, flip_input=config.flip_input)

    def _batch(self, frames: np.ndarray):
        """(B, H, W, 3) uint8 -> (B, 3, H, W) uint8 tensor, the layout face-alignment's batch API takes."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)

    def detect_faces(self, frames: np.ndarray, batch_size: int | None = None, stop=None) -> list[np.ndarray]:
        """(T, H, W, 3) uint8 -> T arrays (N, 4) of face boxes x1, y1, x2, y2 in frame pixels. Raises Stopped before
        a batch once the threading.Event `stop` is set, FramesTooSmall for frames no face can be found in."""
        import torch
        import torch.nn.functional as F

        frames = _check_frames(frames)
        batch_size = batch_size or self.batch_size
        T, H, W, _ = frames.shape
        if reason := too_small_to_detect(H, W):  # S3FD would fail on them with a RuntimeError
            raise FramesTooSmall(f"frames of {W} x {H} pixels are {reason}")
        scale = min(1.0, DETECT_MAX_SIDE / max(H, W))
        found = []
        for start in range(0, T, batch_size):
            check_stop(stop)
            batch = self._batch(frames[start : start + batch_size]).to(self.device)  # (B, 3, H, W)
            if scale < 1.0:
                size = _detection_size(H, W)
                batch = F.interpolate(batch.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            with torch.no_grad():
                per_frame = self.fa.face_detector.detect_from_batch(batch)
            for faces in per_frame:
                faces = np.asarray(faces, dtype=np.float64).reshape(-1, 5)  # (N, 5) with the score
                found.append(faces[:, :4] / scale)
        return found

    def detect(self, frames, batch_size: int | None = None, boxes=None, tracker: FaceTracker | None = None,
               stop=None) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, P, 2) float32 landmarks x, y in frame pixels; NaN rows for frames where the
        tracked face was not found. Known face boxes (see _frame_boxes) skip face detection. A video read in chunks
        passes the same tracker with each, so that the face followed stays the same across them. Once the
        threading.Event `stop` is set, the next batch raises Stopped instead of running (about a second each on a CPU)."""
        frames = _check_frames(frames)
        batch_size = batch_size or self.batch_size
        T = len(frames)
        if boxes is None:
            tracked = (tracker or FaceTracker()).update(self.detect_faces(frames, batch_size, stop=stop))
        else:
            tracked = _frame_boxes(boxes, T)
        landmarks = np.full((T, NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
        have = np.flatnonzero(np.isfinite(tracked).all(axis=1))
        for start in range(0, len(have), batch_size):
            check_stop(stop)
            idx = have[start : start + batch_size]
            faces = [[tracked[i]] for i in idx]  # one box per frame
            points = self.fa.get_landmarks_from_batch(self._batch(frames[idx]), detected_faces=faces)
            for i, p in zip(idx, points):
                if len(p):
                    landmarks[i] = np.asarray(p, dtype=np.float32).reshape(-1, NUM_LANDMARKS, 2)[0]
        return landmarks


def interpolate_missing(landmarks) -> tuple[np.ndarray, int]:
    """(T, P, 2) with NaN in frames without a face -> (T, P, 2) float32 filled, and how many frames were missing.

    Each missing frame is the linear interpolation of the nearest frames before and after it that have a face;
    frames before the first or after the last such frame copy it. Raises NoFaceError when no frame has a face.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    T = len(landmarks)
    flat = landmarks.reshape(T, -1)  # (T, P*2)
    valid = np.isfinite(flat).all(axis=1)
    n_missing = int(T - valid.sum())
    if not valid.any():
        raise NoFaceError(f"no face found in any of the {T} frames")
    if n_missing == 0:
        return landmarks.copy(), 0
    t, have = np.arange(T), np.flatnonzero(valid)
    filled = np.stack([np.interp(t, have, flat[have, k]) for k in range(flat.shape[1])], axis=1)  # (T, P*2)
    return filled.astype(np.float32).reshape(landmarks.shape), n_missing


def smooth(landmarks, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """(T, P, 2) -> (T, P, 2) float32: a centred moving average of window // 2 frames each side, shrinking at the
    ends, moved back onto each frame's own centroid (the auto_avsr convention; see the module docstring)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    T = len(landmarks)
    t = np.arange(T)
    m = np.minimum(window // 2, np.minimum(t, T - 1 - t))  # (T,) half-width per frame
    csum = np.concatenate([np.zeros_like(landmarks[:1]), np.cumsum(landmarks, axis=0)])  # (T+1, P, 2)
    mean = (csum[t + m + 1] - csum[t - m]) / (2 * m + 1)[:, None, None]  # (T, P, 2)
    mean += landmarks.mean(axis=1, keepdims=True) - mean.mean(axis=1, keepdims=True)
    return mean.astype(np.float32)


# -- mouth ROI ---------------------------------------------------------------------------------------------------


def load_mean_face(path: str | Path | None = None) -> np.ndarray:
    """The (P, 2) mean face x, y in a 256 x 256 frame: the bundled template, or a .npy / .csv file."""
    if path is None:
        text = resources.files("mome_cli").joinpath(MEAN_FACE_FILE).read_text()
        face = np.loadtxt(text.splitlines(), delimiter=",")
    elif str(path).endswith(".npy"):
        face = np.load(path)
    else:
        face = np.loadtxt(path, delimiter=",")
    face = np.asarray(face, dtype=np.float64)
    if face.shape != (NUM_LANDMARKS, 2) or not np.isfinite(face).all():
        raise ValueError(f"a mean face must be {NUM_LANDMARKS} finite x, y points, got shape {face.shape} "
                         f"from {path or MEAN_FACE_FILE}")
    return face


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) rotation + uniform scale + translation taking src (N, 2) nearest to dst (N, 2) in least squares
    (Umeyama 1991, reflections excluded)."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean  # (N, 2)
    U, singular, Vt = np.linalg.svd(dst_c.T @ src_c / len(src))  # 2 x 2 cross-covariance
    d = np.array([1.0, -1.0 if np.linalg.det(U) * np.linalg.det(Vt) < 0 else 1.0])  # no reflection
    rotation = U @ np.diag(d) @ Vt
    scale = (singular * d).sum() / (src_c**2).sum(axis=1).mean()
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def _sample_gray(frame: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear grayscale samples of an (H, W, 3) uint8 frame at pixel coordinates xs, ys (S, S); 0 outside."""
    H, W = frame.shape[:2]
    x0, y0 = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    fx, fy = (xs - x0).astype(np.float32), (ys - y0).astype(np.float32)
    out = np.zeros(xs.shape, dtype=np.float32)
    for dy, dx, weight in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        y, x = y0 + dy, x0 + dx
        inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
        pixels = frame[np.clip(y, 0, H - 1), np.clip(x, 0, W - 1)].astype(np.float32) @ GRAY_WEIGHTS  # (S, S)
        out += np.where(inside, weight * pixels, 0.0)
    return out


def crop_mouths(frames, landmarks, mean_face: np.ndarray | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames and their (T, P, 2) (smoothed) landmarks -> (T, S, S) uint8 mouth ROIs."""
    frames = _check_frames(frames)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    reference = load_mean_face() if mean_face is None else np.asarray(mean_face, dtype=np.float64)
    if landmarks.shape != (len(frames), NUM_LANDMARKS, 2) or not np.isfinite(landmarks).all():
        raise ValueError(f"landmarks must be finite ({len(frames)}, {NUM_LANDMARKS}, 2), got {landmarks.shape}")
    stable = list(STABLE_POINTS)
    grid = np.arange(ROI_SIZE, dtype=np.float64)
    rois = np.empty((len(frames), ROI_SIZE, ROI_SIZE), dtype=np.uint8)
    for t, (frame, points) in enumerate(zip(frames, landmarks)):
        A = similarity_transform(points[stable], reference[stable])  # (2, 3) frame -> reference
        mouth = (points[MOUTH_POINTS] @ A[:, :2].T + A[:, 2]).mean(axis=0)  # (2,) in the reference frame
        left, top = np.round(mouth - ROI_SIZE / 2)  # integer corner, as the reference pipeline cuts
        qx, qy = np.meshgrid(left + grid, top + grid)  # (S, S) reference-frame pixel coordinates
        inverse = np.linalg.inv(A[:, :2])  # reference -> frame
        dx, dy = qx - A[0, 2], qy - A[1, 2]
        xs = inverse[0, 0] * dx + inverse[0, 1] * dy
        ys = inverse[1, 0] * dx + inverse[1, 1] * dy
        rois[t] = np.clip(np.rint(_sample_gray(frame, xs, ys)), 0, 255).astype(np.uint8)
    return rois


def normalised_crops(rois: list, device) -> tuple[torch.Tensor, torch.Tensor]:
    """B (T_i, S, S) uint8 ROIs -> (B, T, C, C) float32 centre crops as (x / 255 - PIXEL_MEAN) / PIXEL_STD, zero-padded
    to the longest, on device; and (B,) lengths. The bytes go to the device and are normalised there: a quarter of
    the copy, and no float work on the host (for a 23 s clip, 18 MB of float32)."""
    import torch

    lengths = [len(r) for r in rois]
    frames = torch.zeros(len(rois), max(lengths), CROP_SIZE, CROP_SIZE, device=device)  # (B, T, C, C)
    for i, r in enumerate(rois):
        r = np.asarray(r)
        T, H, W = r.shape
        if H < CROP_SIZE or W < CROP_SIZE:
            raise ValueError(f"ROIs must be at least {CROP_SIZE} x {CROP_SIZE}, got {H} x {W}")
        top, left = (H - CROP_SIZE) // 2, (W - CROP_SIZE) // 2
        crop = torch.from_numpy(np.ascontiguousarray(r[:, top : top + CROP_SIZE, left : left + CROP_SIZE]))
        if frames.is_cuda:
            crop = crop.pin_memory()  # then the copy is queued like a kernel, instead of waiting for the GPU's work
        frames[i, :T] = (crop.to(device, non_blocking=True).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
    return frames, torch.tensor(lengths)


def rois_from_crops(frames) -> np.ndarray:
    """Video that is already mouth crops (LRS2/LRS3 style 96 x 96, or any size; RGB (T, H, W, 3) or gray (T, H, W))
    -> (T, S, S) uint8 grayscale: the shorter side scaled to 96 (antialiased bilinear), the longer one centre-cut."""
    import torch
    import torch.nn.functional as F

    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] == 3:
        gray = frames.astype(np.float32) @ GRAY_WEIGHTS  # (T, H, W)
    elif frames.ndim == 4 and frames.shape[-1] == 1:
        gray = frames[..., 0].astype(np.float32)
    elif frames.ndim == 3:
        gray = frames.astype(np.float32)
    else:
        raise ValueError(f"mouth crops must be (T, H, W, 3) RGB or (T, H, W) gray, got shape {frames.shape}")
    T, H, W = gray.shape
    if (H, W) != (ROI_SIZE, ROI_SIZE):
        scale = ROI_SIZE / min(H, W)
        size = (max(ROI_SIZE, round(H * scale)), max(ROI_SIZE, round(W * scale)))
        resized = F.interpolate(torch.from_numpy(gray)[:, None], size=size, mode="bilinear", antialias=True,
                                align_corners=False)[:, 0].numpy()  # (T, H', W')
        top, left = (size[0] - ROI_SIZE) // 2, (size[1] - ROI_SIZE) // 2
        gray = resized[:, top : top + ROI_SIZE, left : left + ROI_SIZE]  # (T, S, S)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def mouth_rois(frames, detector: LandmarkDetector, boxes=None, config: LipConfig | None = None) -> LipResult:
    """(T, H, W, 3) uint8 RGB frames at 25 fps -> LipResult with (T, S, S) uint8 mouth ROIs.

    Raises NoFaceError when no frame has a face (the caller decides: audio only in av mode, an error in v mode).
    """
    config = config or LipConfig()
    frames = _check_frames(frames)
    T = len(frames)
    landmarks = detector.detect(frames, batch_size=config.batch_size, boxes=boxes)  # (T, P, 2), NaN rows
    filled, n_missing = interpolate_missing(landmarks)
    rois = crop_mouths(frames, smooth(filled, config.smooth_window), load_mean_face(config.mean_face))
    assert rois.shape == (T, ROI_SIZE, ROI_SIZE), rois.shape
    warning = None
    if n_missing > MISSING_WARN_FRACTION * T:
        warning = (f"no face in {n_missing} of {T} frames ({100 * n_missing / T:.0f}%): their mouth crops come from "
                   f"interpolated landmarks and may not show the mouth")
    return LipResult(rois=rois, n_missing=n_missing, warning=warning)


__all__ = [
    "NUM_LANDMARKS",
    "STABLE_POINTS",
    "MOUTH_POINTS",
    "REFERENCE_SIZE",
    "ROI_SIZE",
    "CROP_SIZE",
    "SMOOTH_WINDOW",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "DETECTORS",
    "MIN_DETECT_SIDE",
    "NoFaceError",
    "FramesTooSmall",
    "Stopped",
    "check_stop",
    "LipConfig",
    "LipResult",
    "resolve_device",
    "too_small_to_detect",
    "FaceTracker",
    "track_faces",
    "LandmarkDetector",
    "interpolate_missing",
    "smooth",
    "load_mean_face",
    "similarity_transform",
    "crop_mouths",
    "normalised_crops",
    "rois_from_crops",
    "mouth_rois",
]
