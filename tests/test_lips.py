"""The lip stage: face-alignment's real loading and batch code on random weights saved where it looks for them,
crop geometry on synthetic faces, interpolation and smoothing against hand-computed values, tracking, crops."""


import threading

import numpy as np
import pytest
import torch


from conftest import FakeDetector
from mome_cli import lips
from mome_cli.lips import (
    CROP_SIZE,
    MOUTH_POINTS,
    PIXEL_MEAN,
    PIXEL_STD,
    ROI_SIZE,
    LandmarkDetector,
    LipConfig,
    NoFaceError,
    normalised_crops,
    crop_mouths,
    interpolate_missing,
    load_mean_face,
    mouth_rois,
    rois_from_crops,
    similarity_transform,
    smooth,
    track_faces,
)

@pytest.fixture
def detector(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return LandmarkDetector(device="cpu")


def synthetic_frames(T=2, H=192, W=192, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)


def test_landmarks_from_given_box_go_through_face_alignment(detector, monkeypatch):
    assert type(detector.fa.face_alignment_net).__name__ == "FAN"  # loaded from our file, not compiled
    calls = {"landmarks": [], "detect": 0}
    original = detector.fa.get_landmarks_from_batch

    def spy_landmarks(batch, detected_faces=None, **kw):
        calls["landmarks"].append((tuple(batch.shape), detected_faces))
        return original(batch, detected_faces=detected_faces, **kw)

    def spy_detect(batch):
        calls["detect"] += 1
        return []

    monkeypatch.setattr(detector.fa, "get_landmarks_from_batch", spy_landmarks)
    monkeypatch.setattr(detector.fa.face_detector, "detect_from_batch", spy_detect)
    box = np.array([100.0, 100.0, 140.0, 140.0])
    frames = synthetic_frames()
    landmarks = detector.detect(frames, boxes=box)

    assert landmarks.shape == (2, 68, 2) and landmarks.dtype == np.float32
    assert np.isfinite(landmarks).all()
    assert (landmarks >= 0).all() and (landmarks < 192).all()
    # FAN looks at a square about 2 box sides wide around the box: meaningless points, but near the given box
    assert (landmarks > box[0] - 40).all() and (landmarks < box[2] + 40).all()
    assert calls["detect"] == 0
    (shape, faces), = calls["landmarks"]
    assert shape == (2, 3, 192, 192)
    assert len(faces) == 2 and all(np.array_equal(f[0], box) for f in faces)


def test_frames_without_a_box_get_nan_and_no_landmark_call(detector):
    boxes = np.array([[100.0, 100.0, 140.0, 140.0], [np.nan] * 4])
    landmarks = detector.detect(synthetic_frames(), boxes=boxes)
    assert np.isfinite(landmarks[0]).all() and np.isnan(landmarks[1]).all()


def test_real_detector_batches_find_no_face_and_whole_path_raises(detector):
    frames = synthetic_frames(T=3, H=64, W=80)
    faces = detector.detect_faces(frames, batch_size=2)
    assert len(faces) == 3 and all(f.shape == (0, 4) for f in faces)
    assert np.isnan(detector.detect(frames, batch_size=2)).all()
    with pytest.raises(NoFaceError):
        mouth_rois(frames, detector, config=LipConfig(batch_size=2))


@pytest.mark.parametrize("H, W", [(16, 16), (31, 200), (24, 1280)])
def test_frames_too_small_for_the_detector_are_said_to_hold_no_face(detector, H, W):
    """S3FD halves a frame five times: under 32 pixels a side (here or once scaled to 640 on the longer side) it
    failed with "Given input size: (512x1x1). Calculated output size: (512x0x0)"."""
    frames = synthetic_frames(T=2, H=H, W=W)
    with pytest.raises(NoFaceError, match=f"frames of {W} x {H} pixels are too small to find a face in") as e:
        detector.detect_faces(frames)
    assert isinstance(e.value, lips.FramesTooSmall)
    with pytest.raises(NoFaceError, match="needs 32 pixels a side"):  # what callers of mouth_rois expect
        mouth_rois(frames, detector)
    assert [f.shape for f in detector.detect_faces(synthetic_frames(T=2, H=32, W=32))] == [(0, 4)] * 2


def test_detections_are_scaled_back_and_tracked(detector, monkeypatch):
    frames = synthetic_frames(T=3, H=720, W=1280)  # detected at half size: longest side 640
    seen, used = [], []
    small, big = [40, 40, 80, 80, 0.99], [300, 100, 400, 200, 0.99]

    def fake_detect(batch):
        seen.append(tuple(batch.shape))
        return [np.array([small, big]), np.array([small]), np.empty((0, 5))][: len(batch)]

    original = detector.fa.get_landmarks_from_batch

    def spy_landmarks(batch, detected_faces=None, **kw):
        used.extend(f[0] for f in detected_faces)
        return original(batch, detected_faces=detected_faces, **kw)

    monkeypatch.setattr(detector.fa.face_detector, "detect_from_batch", fake_detect)
    monkeypatch.setattr(detector.fa, "get_landmarks_from_batch", spy_landmarks)
    landmarks = detector.detect(frames, batch_size=3)
    assert seen == [(3, 3, 360, 640)]
    np.testing.assert_allclose(used, [np.array(big[:4]) * 2])  # the largest face, in frame pixels
    assert np.isfinite(landmarks[0]).all() and np.isnan(landmarks[1:]).all()  # the small face is not the track


def test_blazeface_loads_from_its_files(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    blaze = LandmarkDetector(device="cpu", detector="blazeface")
    assert type(blaze.fa.face_detector).__name__ == "BlazeFaceDetector"
    faces = blaze.detect_faces(synthetic_frames(T=2, H=96, W=128))
    assert [f.shape for f in faces] == [(0, 4), (0, 4)]


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="dlib"):
        LipConfig(detector="dlib")
    with pytest.raises(ValueError, match="0"):
        LipConfig(batch_size=0)
    with pytest.raises(ValueError, match="tpu"):
        LipConfig(device="tpu")


# -- crop geometry -----------------------------------------------------------------------------------------------


def _pose(angle_deg=20.0, scale=1.7, shift=(150.0, 90.0)):
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return scale * rotation, np.array(shift)


def _posed_face(**pose):
    """Mean-face landmarks moved into a frame by a known rotation, scale and translation."""
    M, t = _pose(**pose)
    return load_mean_face() @ M.T + t, M, t


def _draw(H, W, inside):
    """(H, W, 3) uint8: grey 40 background, 255 where inside(x, y) holds (x, y pixel centres)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    frame = np.full((H, W, 3), 40, dtype=np.uint8)
    frame[inside(x, y)] = 255
    return frame


def _bright(roi):
    ys, xs = np.nonzero(roi > 150)
    return xs, ys


def test_similarity_transform_recovers_a_known_pose():
    points, M, t = _posed_face()
    A = similarity_transform(load_mean_face(), points)
    np.testing.assert_allclose(A[:, :2], M, atol=1e-9)
    np.testing.assert_allclose(A[:, 2], t, atol=1e-7)


def test_crop_centres_the_mouth_and_removes_rotation_and_scale():
    points, M, t = _posed_face()
    reference = load_mean_face()
    H, W = 480, 560
    centre = points[MOUTH_POINTS].mean(axis=0)
    radius = 8 * 1.7  # 8 px of the reference frame
    disc = _draw(H, W, lambda x, y: np.hypot(x - centre[0], y - centre[1]) <= radius)

    a, b = points[48], points[54]  # mouth corners; a bar 3 px (reference) thick between them
    direction = (b - a) / np.linalg.norm(b - a)

    def bar(x, y):
        along = (x - a[0]) * direction[0] + (y - a[1]) * direction[1]
        across = -(x - a[0]) * direction[1] + (y - a[1]) * direction[0]
        return (along >= 0) & (along <= np.linalg.norm(b - a)) & (np.abs(across) <= 1.5 * 1.7)

    frames = np.stack([disc, _draw(H, W, bar)])
    rois = crop_mouths(frames, np.stack([points, points]))
    assert rois.shape == (2, ROI_SIZE, ROI_SIZE) and rois.dtype == np.uint8

    xs, ys = _bright(rois[0])
    assert abs(xs.mean() - 47.5) <= 1.0 and abs(ys.mean() - 47.5) <= 1.0  # the mouth centre is the ROI's centre
    assert abs(len(xs) - np.pi * 8**2) < 0.15 * np.pi * 8**2  # scale removed: radius 8 px again

    xs, ys = _bright(rois[1])
    slope = np.polyfit(xs, ys, 1)[0]  # rotation removed: the bar lies as the mean face's mouth corners do
    ref_a, ref_b = reference[48], reference[54]
    assert abs(np.degrees(np.arctan(slope)) - np.degrees(np.arctan2(*(ref_b - ref_a)[::-1]))) < 1.0
    assert abs((xs.max() - xs.min()) - np.linalg.norm(ref_b - ref_a)) <= 2.0

    crops, lengths = normalised_crops([rois], "cpu")
    assert crops.shape == (1, 2, CROP_SIZE, CROP_SIZE) and crops.dtype == torch.float32 and lengths.tolist() == [2]
    np.testing.assert_allclose(crops[0, 0, 44, 44], (255 / 255 - PIXEL_MEAN) / PIXEL_STD, rtol=1e-5)
    np.testing.assert_allclose(crops[0, 0, 0, 0], (40 / 255 - PIXEL_MEAN) / PIXEL_STD, rtol=1e-5)


def test_crop_outside_the_frame_is_black():
    points, _, _ = _posed_face(shift=(-1000.0, -1000.0))  # the whole ROI outside a 100 x 100 frame
    rois = crop_mouths(np.full((1, 100, 100, 3), 200, dtype=np.uint8), points[None])
    assert rois.shape == (1, ROI_SIZE, ROI_SIZE) and (rois == 0).all()


def test_mouth_rois_whole_path():
    points, _, _ = _posed_face()
    centre = points[MOUTH_POINTS].mean(axis=0)
    frame = _draw(480, 560, lambda x, y: np.hypot(x - centre[0], y - centre[1]) <= 8 * 1.7)
    frames = np.repeat(frame[None], 5, axis=0)

    result = mouth_rois(frames, FakeDetector(points, missing=[1]))
    assert result.rois.shape == (5, ROI_SIZE, ROI_SIZE) and result.n_missing == 1 and result.warning is None
    assert (result.rois == result.rois[0]).all()  # interpolated and smoothed landmarks are the same face

    half = mouth_rois(frames[:4], FakeDetector(points, missing=[0, 3]))
    assert half.n_missing == 2 and half.warning is None  # exactly half: no warning

    most = mouth_rois(frames, FakeDetector(points, missing=[0, 2, 4]))
    assert most.n_missing == 3 and "3 of 5" in most.warning

    with pytest.raises(NoFaceError, match="5 frames"):
        mouth_rois(frames, FakeDetector(points, missing=range(5)))


# -- landmark time series ----------------------------------------------------------------------------------------


def test_interpolation_by_hand():
    values = np.array([np.nan, 2.0, np.nan, np.nan, 8.0, np.nan])
    landmarks = np.broadcast_to(values[:, None, None], (6, 68, 2)).copy()
    filled, n_missing = interpolate_missing(landmarks)
    assert n_missing == 4 and filled.dtype == np.float32
    np.testing.assert_allclose(filled[:, 0, 0], [2, 2, 4, 6, 8, 8])
    np.testing.assert_allclose(filled[:, 67, 1], [2, 2, 4, 6, 8, 8])

    partial = landmarks.copy()
    partial[1, 5, 0] = np.nan  # one missing point makes the whole frame missing
    assert interpolate_missing(partial)[1] == 5


def test_all_missing_raises():
    with pytest.raises(NoFaceError, match="4 frames"):
        interpolate_missing(np.full((4, 68, 2), np.nan))


def test_smoothing_by_hand():
    # two points on the x axis: p0 = t, p1 = t + a_t; window 4 -> half-widths 0, 1, 2, 1, 0
    a = np.array([0.0, 3.0, 6.0, 0.0, 3.0])
    t = np.arange(5.0)
    landmarks = np.zeros((5, 2, 2))
    landmarks[:, 0, 0], landmarks[:, 1, 0] = t, t + a
    out = smooth(landmarks, window=4)
    np.testing.assert_allclose(out[:, 0, 0], [0, 1, 3.8, 1.5, 4], atol=1e-6)
    np.testing.assert_allclose(out[:, 1, 0], [0, 4, 6.2, 4.5, 7], atol=1e-6)
    np.testing.assert_allclose(out[..., 1], 0, atol=1e-6)

    np.testing.assert_allclose(smooth(landmarks, window=1), landmarks, atol=1e-6)  # no smoothing
    moving = np.random.default_rng(0).normal(size=(1, 68, 2)) + np.arange(30.0)[:, None, None]
    np.testing.assert_allclose(smooth(moving, window=12), moving, atol=1e-5)  # pure translation is kept


def test_tracking_keeps_the_first_largest_face():
    a0, b0 = [10, 10, 110, 110, 0.9], [300, 10, 340, 50, 0.9]
    a1, b1 = [15, 12, 112, 114, 0.9], [200, 0, 400, 200, 0.9]  # the second person is now bigger
    candidates = [np.array([b0, a0]), np.array([b1, a1]), np.array([b1]), np.empty((0, 5))]
    tracked = track_faces(candidates)
    np.testing.assert_array_equal(tracked[0], a0[:4])
    np.testing.assert_array_equal(tracked[1], a1[:4])  # nearest the previous face, not the largest
    assert np.isnan(tracked[2:]).all()  # only the other person (too far) or nobody

    later = track_faces([np.array([a0])] + [np.array([b1])] * (lips.TRACK_RESET + 1))
    assert np.isnan(later[1 : lips.TRACK_RESET + 1]).all()
    np.testing.assert_array_equal(later[-1], b1[:4])  # after a second without the face: a new track


def test_a_video_tracked_in_chunks_follows_the_face_it_would_follow_whole():
    """The speaker first; from frame 3 a listener larger than them: read in chunks of 4 frames, the track must not
    start again on the largest face at each chunk (it did: an interview's listener took over every 5 s)."""
    speaker = [[10 + t, 10, 110 + t, 110, 0.9] for t in range(10)]
    listener = [200, 0, 400, 200, 0.9]
    candidates = [np.array([speaker[t]] + ([listener] if t >= 3 else [])) for t in range(10)]
    whole = track_faces(candidates)
    tracker = lips.FaceTracker()
    chunked = np.concatenate([tracker.update(candidates[at : at + 4]) for at in range(0, 10, 4)])
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(chunked, np.array(speaker)[:, :4])


# -- ready-made mouth crops --------------------------------------------------------------------------------------


def test_rois_from_crops_96():
    frames = np.zeros((3, 96, 96, 3), dtype=np.uint8)
    frames[...] = (100, 150, 200)
    rois = rois_from_crops(frames)
    assert rois.shape == (3, 96, 96) and rois.dtype == np.uint8
    assert (rois == 141).all()  # round(0.299 * 100 + 0.587 * 150 + 0.114 * 200) = round(140.75)
    assert normalised_crops([rois], "cpu")[0].shape == (1, 3, CROP_SIZE, CROP_SIZE)


def test_normalised_crops_are_the_centre_crops_normalised_and_zero_padded():
    g = np.random.default_rng(0)
    rois = [g.integers(0, 256, (4, 96, 96), dtype=np.uint8), g.integers(0, 256, (2, 90, 100), dtype=np.uint8)]
    frames, lengths = normalised_crops(rois, "cpu")
    assert frames.shape == (2, 4, CROP_SIZE, CROP_SIZE) and lengths.tolist() == [4, 2]
    for i, r in enumerate(rois):
        top, left = (r.shape[1] - CROP_SIZE) // 2, (r.shape[2] - CROP_SIZE) // 2
        crop = r[:, top : top + CROP_SIZE, left : left + CROP_SIZE]
        want = (crop.astype(np.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD
        np.testing.assert_array_equal(frames[i, : len(r)].numpy(), want)  # float32 the same way: the same numbers
    assert not frames[1, 2:].any()  # padding is zeros, as before normalising moved to the device
    with pytest.raises(ValueError, match="at least"):
        normalised_crops([np.zeros((1, 80, 96), dtype=np.uint8)], "cpu")


@pytest.mark.parametrize("shape", [(2, 120, 100), (2, 120, 100, 3), (2, 100, 120)])
def test_rois_from_crops_other_sizes_stay_centred(shape):
    frames = np.full(shape, 30, dtype=np.uint8)
    H, W = shape[1:3]
    frames[:, H // 2 - 10 : H // 2 + 10, W // 2 - 10 : W // 2 + 10] = 250  # a 20 px square at the centre
    rois = rois_from_crops(frames)
    assert rois.shape == (2, 96, 96) and rois.dtype == np.uint8
    xs, ys = _bright(rois[0])
    assert abs(xs.mean() - 47.5) <= 0.5 and abs(ys.mean() - 47.5) <= 0.5
    side = 20 * 96 / min(H, W)  # the shorter side became 96
    assert abs(len(xs) - side**2) < 0.15 * side**2


def test_bundled_mean_face():
    face = load_mean_face()
    assert face.shape == (68, 2) and (face > 0).all() and (face < lips.REFERENCE_SIZE).all()
    assert face[8, 1] > face[57, 1] > face[33, 1] > face[27, 1]  # chin below lips below nose tip below nose bridge
    assert face[36, 0] < face[45, 0] and face[48, 0] < face[54, 0]  # not mirrored


def test_building_the_detector_leaves_torchs_generator_as_it_was(torch_home, monkeypatch):
    """It is built in the read-ahead thread while the main thread draws a tiny model's weights from a seed."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    LandmarkDetector(device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before)


def test_the_detector_is_built_holding_the_lock_that_seeded_weights_take(monkeypatch):
    """Giving the generator back is not enough: face-alignment must not draw inside another thread's seeded block."""
    import face_alignment

    from mome_cli import rng

    seen = []

    class Built:  # in face-alignment's place: is a seeded() block in another thread kept out meanwhile?
        def __init__(self, *args, **kwargs):
            def probe():
                got = rng._LOCK.acquire(timeout=0.2)
                seen.append(got)
                if got:
                    rng._LOCK.release()

            other = threading.Thread(target=probe)
            other.start()
            other.join()

    monkeypatch.setattr(face_alignment, "FaceAlignment", Built)
    LandmarkDetector(device="cpu")
    assert seen == [False]
