"""Preprocessing time for a 60 s, 25 fps, 1280 x 720 clip with audio, stage by stage, on this machine (issue #4).

    python benchmarks/preprocess.py                              # model stages on all frames if ~15 minutes allow
    python benchmarks/preprocess.py --frames-for-detection 64    # model stages on the first 64 frames, extrapolated
    python benchmarks/preprocess.py --device cuda                # the same on a GPU

The clip is made by ffmpeg from lavfi sources (testsrc2 + sine, H.264 + AAC) in a temporary folder. Each stage is
warmed up first (numba compiles face-alignment's heatmap decoding on its first call, ~10 s; oneDNN builds its kernels
for each input shape), then timed once with time.perf_counter:

- probe + audio decode, video decode streaming at full size and at mome_cli.preprocess.MAX_HEIGHT;
- face detection with S3FD and BlazeFace (LandmarkDetector.detect_faces: batches of 16 frames scaled to 640 px);
- FAN landmarks with one known box per frame (LandmarkDetector.detect with boxes);
- mouth crops (crop_mouths with given landmarks);
- the whole Preprocessor path (probe, audio, two video passes, detection, tracking, FAN, smoothing, crops);
- a baseline on the same frames: face-alignment used per frame as its README shows (get_landmarks_from_image on the
  full-size frame, detection inside), against our path (LandmarkDetector.detect: batched detection on downscaled
  frames, tracking, FAN with the tracked box).

Cheap stages (decode, crop) always run on every frame. Stages that run a network run on the first N frames: all of
them when the estimate from the warm-up says the whole run fits in --budget-minutes, else as many (a multiple of 16)
as fit, and the table scales their per-frame rate to the whole clip, saying so in its last column. Those N frames are
held in memory (4.1 GB for all 1500) and the network stages take them a block of 16 at a time, each stage in turn on
the same block, so that load from other processes on a shared machine falls on all of them alike; the table gives
their total time and the rate of their fastest block (the nearest to an idle machine), and the log the load average.

Weights: face-alignment's own networks (S3FD, BlazeFace, 2DFAN-4) with random weights, saved under a temporary
TORCH_HOME in the files face-alignment 1.5 loads, as tests/test_lips.py does. A forward pass costs the same whatever the
weights. What they would detect is fixed instead: the detectors' score heads say "background" everywhere (so their
post-processing has no candidates, as in a frame without faces), and each detector call, after running its network,
reports one face box (FACE_BOX): one face per frame, as with a single real speaker, so FAN runs once a frame on both
paths. The landmarks are meaningless; only the time is measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mome_cli, not an installed one

from mome_cli.lips import DETECT_BATCH, REFERENCE_SIZE, ROI_SIZE, LandmarkDetector, crop_mouths, load_mean_face
from mome_cli.media import VIDEO_FPS, decode_audio, decode_video, iter_video, probe
from mome_cli.preprocess import CHUNK_FRAMES, MAX_HEIGHT, Preprocessor, PreprocessOptions

WIDTH, HEIGHT = 1280, 720  # the clip's frame size: 720p
SECONDS = 60.0  # the clip's length: 1500 frames at 25 fps
SINE_HZ = 440  # the clip's sound
BUDGET_MINUTES = 15.0  # whole run, warm-ups included; beyond it network stages run on a subset
BATCH = DETECT_BATCH  # 16 frames per detection batch, as the Preprocessor on a GPU (2 on the CPU: the same a frame)
BASELINE_WARMUP_FRAMES = 2  # the baseline works a frame at a time: two frames warm it up and give its rate
FACE_BOX = (0.42, 0.25, 0.58, 0.62)  # x1, y1, x2, y2 as fractions of the frame: a 205 x 266 px face at 720p
FACE_SCORE = 0.99

# File names face-alignment 1.5.0 loads from $TORCH_HOME/hub/checkpoints (the basenames of its download URLs).
FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
SFD_FILE = "s3fd-619a316812.pth"
BLAZEFACE_FILE, BLAZEFACE_ANCHORS = "blazeface.pth", "anchors.npy"
BLAZEFACE_ANCHOR_COUNT = 896  # anchors of the 128 x 128 front model: 16x16x2 + 8x8x6


LOAD = []  # the 1-minute load average at each log line: this run alone keeps it near its thread count


def log(message: str) -> None:
    LOAD.append(os.getloadavg()[0])
    print(f"[{time.strftime('%H:%M:%S')}] {message} (load {LOAD[-1]:.2f})", file=sys.stderr, flush=True)


# -- set-up --------------------------------------------------------------------------------------------------------


def make_clip(path: Path, seconds: float) -> Path:
    """A 1280 x 720, 25 fps H.264 clip with a 48 kHz AAC sine, from ffmpeg's lavfi sources."""
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={VIDEO_FPS}:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency={SINE_HZ}:sample_rate=48000:duration={seconds}",
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)]
    try:
        subprocess.run(args, check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"ffmpeg could not make {path}: {e.stderr.decode('utf-8', 'replace').strip()}") from e
    return path


def save_random_weights(torch_home: Path) -> None:
    """face-alignment's networks with random weights, as plain state dicts where it loads them from; the detectors'
    score heads set to background everywhere."""
    import torch
    from face_alignment.detection.blazeface.net_blazeface import BlazeFace
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), folder / FAN_FILE)  # 2DFAN-4: four stacked hourglasses

    sfd = s3fd()
    with torch.no_grad():
        for name, layer in sfd.named_modules():
            if name.endswith("_mbox_conf"):  # channels: background (1 or 3 of them), then face
                layer.weight.zero_()
                layer.bias.fill_(10.0)
                layer.bias[-1] = -10.0
    torch.save(sfd.state_dict(), folder / SFD_FILE)

    blaze = BlazeFace()
    with torch.no_grad():
        for layer in (blaze.classifier_8, blaze.classifier_16):
            layer.weight.zero_()
            layer.bias.fill_(-100.0)  # sigmoid(-100): no face at any anchor
    torch.save(blaze.state_dict(), folder / BLAZEFACE_FILE)
    anchors = np.random.default_rng(0).uniform(0.1, 0.9, (BLAZEFACE_ANCHOR_COUNT, 4)).astype(np.float32)
    np.save(folder / BLAZEFACE_ANCHORS, anchors)


def face_box(W: int, H: int) -> np.ndarray:
    """(5,) FACE_BOX in the pixels of a W x H image, with its score."""
    x1, y1, x2, y2 = FACE_BOX
    return np.array([x1 * W, y1 * H, x2 * W, y2 * H, FACE_SCORE])


def report_one_face(face_detector) -> None:
    """Make a face-alignment detector run its network as usual, then report FACE_BOX as the one face it found."""
    run_batch, run_image = face_detector.detect_from_batch, face_detector.detect_from_image

    def detect_from_batch(tensor):  # (B, 3, H, W), as LandmarkDetector.detect_faces calls it
        run_batch(tensor)
        H, W = tensor.shape[-2:]
        return [face_box(W, H)[None] for _ in range(len(tensor))]  # B arrays (1, 5)

    def detect_from_image(image):  # (H, W, 3), as FaceAlignment.get_landmarks_from_image calls it
        run_image(image)
        H, W = image.shape[:2]
        return [face_box(W, H)]  # one (5,) box

    face_detector.detect_from_batch = detect_from_batch
    face_detector.detect_from_image = detect_from_image


def mouth_landmarks(T: int, W: int, H: int) -> np.ndarray:
    """(T, 68, 2): the mean face scaled onto FACE_BOX, the same every frame."""
    x1, y1, x2, y2, _ = face_box(W, H)
    scale = (x2 - x1) / REFERENCE_SIZE * 1.5  # the mean face's 256 px frame is wider than the face itself
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    points = load_mean_face() * scale + centre - scale * REFERENCE_SIZE / 2
    return np.repeat(points[None], T, axis=0)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def machine(device: str) -> list[str]:
    import face_alignment
    import numba
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ffmpeg_version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
    ffmpeg_version = ffmpeg_version.split(" Copyright")[0]
    lines = [
        f"CPU: {cpu}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable by this process)",
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; face-alignment "
        f"{face_alignment.__version__}; numba {numba.__version__} (NUMBA_DISABLE_JIT "
        f"{os.environ.get('NUMBA_DISABLE_JIT', 'unset')}); {ffmpeg_version}; Python {platform.python_version()}",
        f"device: {device}",
    ]
    if device.startswith("cuda"):
        lines.append(f"GPU: {torch.cuda.get_device_name(device)}")
    return lines


# -- timing --------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    stage: str
    frames: int  # frames the stage was timed on
    seconds: float  # measured
    clip_frames: int  # frames in the whole clip
    best: float | None = None  # frames/s of the fastest block, for stages timed block by block

    @property
    def rate(self) -> float:
        return self.frames / self.seconds

    @property
    def real_time(self) -> float:  # seconds of video per second of work
        return self.frames / VIDEO_FPS / self.seconds

    @property
    def clip_seconds(self) -> float:
        return self.seconds * self.clip_frames / self.frames

    @property
    def basis(self) -> str:
        if self.frames == self.clip_frames:
            return "measured on all frames"
        return f"extrapolated: rate on {self.frames} frames x {self.clip_frames}"


class Timer:
    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def __call__(self, fn, *args):
        """(seconds, result) of fn(*args)."""
        self.sync()
        start = time.perf_counter()
        result = fn(*args)
        self.sync()
        return time.perf_counter() - start, result


def time_over_chunks(timer: Timer, fn, path: Path, info, frames: int) -> float:
    """Seconds spent in fn over the first `frames` frames of the clip, streamed in Preprocessor-sized chunks at
    MAX_HEIGHT; decoding is not counted."""
    total = 0.0
    for chunk in iter_video(path, duration=frames / VIDEO_FPS, info=info, chunk=CHUNK_FRAMES, max_height=MAX_HEIGHT):
        seconds, _ = timer(fn, chunk)
        total += seconds
    return total


def time_in_turn(timer: Timer, stages: dict, frames: np.ndarray, block: int = BATCH) -> dict[str, list[float]]:
    """Seconds of each block for every stage: block by block, every stage on the same block before the next one,
    starting with a different stage each block."""
    names = list(stages)
    seconds = {name: [] for name in names}
    for b, start in enumerate(range(0, len(frames), block)):
        chunk = frames[start : start + block]  # (block, H, W, 3)
        turn = names[b % len(names):] + names[: b % len(names)]
        for name in turn:
            spent, _ = timer(stages[name], chunk)
            seconds[name].append(spent)
        times = ", ".join(f"{name} {seconds[name][-1]:.1f} s" for name in names)
        log(f"  block {b + 1} of {-(-len(frames) // block)}: {times}")
    return seconds


def decode_all(path: Path, info, max_height: int | None) -> int:
    frames = 0
    for chunk in iter_video(path, info=info, chunk=CHUNK_FRAMES, max_height=max_height):
        frames += len(chunk)
    return frames


def per_frame_warm(timer: Timer, fn, frames: np.ndarray) -> float:
    """Warm fn up on these frames (first-call compilation and kernel selection), then time it on them again:
    seconds per frame."""
    fn(frames)
    seconds, _ = timer(fn, frames)
    return seconds / len(frames)


def choose_frames(requested: int | None, clip_frames: int, per_frame: float, budget_left: float) -> int:
    """Frames for the network stages: the request, or all if the estimate fits the budget, or a multiple of BATCH."""
    if requested is not None:
        return min(requested, clip_frames)
    if per_frame * clip_frames <= budget_left:
        return clip_frames
    fit = int(max(budget_left, 0) / per_frame) // BATCH * BATCH
    return min(max(fit, BATCH), clip_frames)


# -- the benchmark -------------------------------------------------------------------------------------------------


def run(args) -> tuple[list[Row], list[tuple[str, Row, Row]], int]:
    started = time.perf_counter()
    budget = args.budget_minutes * 60
    timer = Timer(args.device)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mome-bench-") as tmp:
        tmp = Path(tmp)
        os.environ["TORCH_HOME"] = str(tmp / "torch")  # random weights; the real cache stays untouched
        save_random_weights(tmp / "torch")

        log(f"making a {args.seconds:g} s {WIDTH}x{HEIGHT} {VIDEO_FPS} fps clip with ffmpeg")
        clip = make_clip(tmp / "clip.mp4", args.seconds)
        info = probe(clip)
        T = round(info.duration * VIDEO_FPS)  # 1500 for 60 s
        log(f"{clip.stat().st_size / 1e6:.1f} MB, {info.width}x{info.height}, {info.fps:g} fps, {T} frames")

        # probe + audio, video decode: every frame, after a 1 s warm-up
        decode_audio(clip, duration=1.0, info=info)
        seconds, _ = timer(lambda: decode_audio(clip, info=probe(clip)))
        rows.append(Row(f"probe + audio decode ({info.duration:g} s to 16 kHz mono)", T, seconds, T))
        for max_height, name in ((None, f"video decode, full {info.width}x{info.height}"),
                                 (MAX_HEIGHT, f"video decode at MAX_HEIGHT = {MAX_HEIGHT}")):
            decode_video(clip, duration=1.0, info=info, max_height=max_height)
            seconds, frames = timer(decode_all, clip, info, max_height)
            rows.append(Row(name, frames, seconds, T))
            log(f"{name}: {seconds:.1f} s")
        decode_per_frame = rows[-1].seconds / rows[-1].frames

        # detectors: face-alignment's networks, one face reported per frame
        log(f"loading face-alignment with random weights on {args.device}")
        sfd = LandmarkDetector(device=args.device, detector="sfd")
        blaze = LandmarkDetector(device=args.device, detector="blazeface")
        for detector in (sfd, blaze):
            report_one_face(detector.fa.face_detector)
        first = decode_video(clip, duration=BATCH / VIDEO_FPS, info=info, max_height=MAX_HEIGHT)  # (16, H, W, 3)
        H, W = first.shape[1:3]
        box = face_box(W, H)[:4]
        mean_face = load_mean_face()

        stages = {  # name: (what runs on a chunk of frames)
            "detect_sfd": lambda f: sfd.detect_faces(f, BATCH),
            "detect_blaze": lambda f: blaze.detect_faces(f, BATCH),
            "fan": lambda f: sfd.detect(f, BATCH, boxes=box),
            "ours_sfd": lambda f: sfd.detect(f, BATCH),
            "ours_blaze": lambda f: blaze.detect(f, BATCH),
            "baseline_sfd": lambda f: [sfd.fa.get_landmarks_from_image(frame) for frame in f],
            "baseline_blaze": lambda f: [blaze.fa.get_landmarks_from_image(frame) for frame in f],
            "crop": lambda f: crop_mouths(f, mouth_landmarks(len(f), W, H), mean_face),
        }

        log("warming up (numba compiles face-alignment's heatmap decoding on the first FAN call)")
        cost = {}  # seconds per frame, after warm-up
        for name in ("fan", "detect_sfd", "detect_blaze", "crop"):
            cost[name] = per_frame_warm(timer, stages[name], first)
            log(f"  {name}: {cost[name]:.3f} s/frame")
        for name in ("baseline_sfd", "baseline_blaze"):
            cost[name] = per_frame_warm(timer, stages[name], first[:BASELINE_WARMUP_FRAMES])
            log(f"  {name}: {cost[name]:.3f} s/frame")
        for detect in ("sfd", "blaze"):  # our path = detection + FAN (tracking is negligible): warm already
            cost[f"ours_{detect}"] = cost[f"detect_{detect}"] + cost["fan"]
            cost[f"whole_{detect}"] = cost[f"ours_{detect}"] + cost["crop"] + 2 * decode_per_frame
        network_stages = ("detect_sfd", "detect_blaze", "fan", "ours_sfd", "ours_blaze", "baseline_sfd",
                          "baseline_blaze", "whole_sfd", "whole_blaze")
        per_frame = sum(cost[name] for name in network_stages) + decode_per_frame  # + decoding the N frames once
        crop_all = (cost["crop"] + decode_per_frame) * T
        budget_left = budget - (time.perf_counter() - started) - crop_all
        N = choose_frames(args.frames_for_detection, T, per_frame, budget_left)
        log(f"network stages: {per_frame:.2f} s a frame in all, {per_frame * T / 60:.1f} min for {T} frames; "
            f"{budget_left / 60:.1f} min left of the budget: timing them on {N} frames")

        labels = {
            "detect_sfd": f"face detection, sfd (detect_faces, batches of {BATCH} at 640 px)",
            "detect_blaze": f"face detection, blazeface (detect_faces, batches of {BATCH} at 640 px)",
            "fan": "FAN landmarks, one known box per frame",
            "baseline_sfd": f"baseline sfd: get_landmarks_from_image per frame at {W}x{H}",
            "ours_sfd": "ours sfd: LandmarkDetector.detect (detection + tracking + FAN)",
            "baseline_blaze": f"baseline blazeface: get_landmarks_from_image per frame at {W}x{H}",
            "ours_blaze": "ours blazeface: LandmarkDetector.detect (detection + tracking + FAN)",
        }
        frames = decode_video(clip, duration=N / VIDEO_FPS, info=info, max_height=MAX_HEIGHT)  # (N, H, W, 3)
        blocks = [len(frames[start : start + BATCH]) for start in range(0, N, BATCH)]
        named = {}
        for name, seconds in time_in_turn(timer, {name: stages[name] for name in labels}, frames).items():
            best = max(n / spent for n, spent in zip(blocks, seconds))
            named[name] = Row(labels[name], N, sum(seconds), T, best)
            log(f"{labels[name]}: {sum(seconds):.1f} s on {N} frames, fastest block {best:.2f} frames/s")
        del frames
        seconds = time_over_chunks(timer, stages["crop"], clip, info, T)
        named["crop"] = Row("mouth crops (crop_mouths, given landmarks)", T, seconds, T)
        log(f"crops: {seconds:.1f} s on {T} frames")

        short = clip if N == T else make_clip(tmp / f"first-{N}.mp4", N / VIDEO_FPS)
        for key, detect, detector in (("sfd", "sfd", sfd), ("blaze", "blazeface", blaze)):
            options = PreprocessOptions(mode="av", detector=detect, device=args.device)
            preprocessor = Preprocessor(options, cache_dir=None, detector=detector)
            seconds, result = timer(preprocessor, short)
            assert result.mode == "av" and result.rois.shape == (N, ROI_SIZE, ROI_SIZE), (result.mode, result.warnings)
            named[f"whole_{key}"] = Row(f"whole Preprocessor path, {detect} (av, no cache)", N, seconds, T)
            log(f"Preprocessor {detect}: {seconds:.1f} s on {N} frames")

    rows += [named[name] for name in ("detect_sfd", "detect_blaze", "fan", "crop", "whole_sfd", "whole_blaze",
                                      "baseline_sfd", "ours_sfd", "baseline_blaze", "ours_blaze")]
    pairs = [("sfd", named["baseline_sfd"], named["ours_sfd"]),
             ("blazeface", named["baseline_blaze"], named["ours_blaze"])]
    return rows, pairs, N


def table(rows: list[Row]) -> list[str]:
    clip = f"{rows[0].clip_frames / VIDEO_FPS:g} s clip, s"
    header = ("stage", "frames", "seconds", "frames/s", "x real time", "fastest block, frames/s", clip, "basis")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        best = "-" if r.best is None else f"{r.best:.2f}"
        lines.append(f"| {r.stage} | {r.frames} | {r.seconds:.2f} | {r.rate:.2f} | {r.real_time:.3f} | {best} | "
                     f"{r.clip_seconds:.{0 if r.clip_seconds >= 10 else 1}f} | {r.basis} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=SECONDS, help="length of the clip (default 60)")
    parser.add_argument("--frames-for-detection", type=int, default=None, metavar="N",
                        help="time the network stages on the first N frames and extrapolate (default: all frames "
                             "if the run fits --budget-minutes, else as many as fit)")
    parser.add_argument("--budget-minutes", type=float, default=BUDGET_MINUTES,
                        help="wall-clock budget that chooses N when it is not given (default 15)")
    parser.add_argument("--device", default="cpu", help="where face-alignment runs: cpu | cuda | cuda:N")
    args = parser.parse_args()
    if args.seconds * VIDEO_FPS < BATCH:
        parser.error(f"--seconds must give at least {BATCH} frames ({BATCH / VIDEO_FPS:g} s), got {args.seconds:g}")
    if args.frames_for_detection is not None and args.frames_for_detection < BASELINE_WARMUP_FRAMES:
        parser.error(f"--frames-for-detection must be >= {BASELINE_WARMUP_FRAMES}, got {args.frames_for_detection}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA GPU is usable here")

    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows, pairs, N = run(args)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()

    command = " ".join(["python", f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    print(f"Preprocessing benchmark, {date}: `{command}`")
    print()
    for line in machine(args.device):
        print(f"- {line}")
    print(f"- load average (1 min): {load_before[0]:.2f} before, at most {max(LOAD):.2f} during, "
          f"{load_after[0]:.2f} after (this run alone: about its {torch_threads()} threads); "
          f"run took {wall / 60:.1f} min")
    print("- random weights (timing only); one face per frame; network stages on the first "
          f"{N} of {rows[0].clip_frames} frames")
    print()
    for line in table(rows):
        print(line)
    print()
    for name, baseline, ours in pairs:
        print(f"- {name}: baseline {baseline.clip_seconds:.0f} s, ours {ours.clip_seconds:.0f} s for the clip's "
              f"landmarks: {baseline.seconds / ours.seconds:.1f}x faster in total, {ours.best / baseline.best:.1f}x "
              f"in the fastest blocks, on the same {ours.frames} frames")


if __name__ == "__main__":
    main()
