"""From media files to Clips: modality fallbacks, the real face-alignment path, crops, and the cache."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest

from conftest import FakeDetector, wait_for
from mome_cli.lips import MOUTH_POINTS, Stopped, load_mean_face
from mome_cli.media import MediaError, NoAudioError, NoVideoError
from mome_cli import preprocess as preprocess_module
from mome_cli.preprocess import Preprocessor, PreprocessOptions, ReadAhead

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    video = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=1.2"]
    audio = ["-f", "lavfi", "-i", "sine=frequency=300:duration=1.2"]
    ffmpeg(*video, *audio, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", d / "face.mp4")
    ffmpeg(*video, "-c:v", "libx264", "-pix_fmt", "yuv420p", d / "silent.mp4")
    ffmpeg(*audio, d / "speech.wav")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x96:rate=25:duration=1", *audio, "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", d / "crops.mp4")
    return d


def face_points(scale=0.6, shift=(60.0, 40.0)):
    """The mean face placed inside a 320x240 frame."""
    return load_mean_face() * scale + np.array(shift)


def test_face_video_gives_audio_and_one_roi_per_frame(media):
    clip = Preprocessor(PreprocessOptions(mode="av"), detector=FakeDetector(face_points()))(media / "face.mp4")
    assert clip.mode == "av" and clip.warnings == []
    assert clip.audio.dtype == np.float32 and len(clip.audio) == 19200  # 1.2 s at 16 kHz
    assert clip.rois.shape == (30, 96, 96) and clip.rois.dtype == np.uint8  # 1.2 s at 25 fps, from a 30 fps source


def test_no_face_anywhere_falls_back_to_audio_in_av_and_fails_in_v(media):
    nobody = FakeDetector(face_points(), missing=range(30))
    clip = Preprocessor(PreprocessOptions(mode="av"), detector=nobody)(media / "face.mp4")
    assert clip.mode == "a" and clip.rois is None and clip.audio is not None
    assert clip.warnings == ["no face found in any frame: transcribed from audio alone"]
    with pytest.raises(MediaError, match="face.mp4: no face found in any frame"):
        Preprocessor(PreprocessOptions(mode="v"), detector=nobody)(media / "face.mp4")


def test_faces_in_some_frames_are_interpolated_with_a_warning_past_half(media):
    few = FakeDetector(face_points(), missing=range(0, 30, 3))  # 10 of 30 missing: no warning
    assert Preprocessor(PreprocessOptions(mode="v"), detector=few)(media / "face.mp4").warnings == []
    most = FakeDetector(face_points(), missing=range(0, 20))  # 20 of 30 missing
    clip = Preprocessor(PreprocessOptions(mode="v"), detector=most)(media / "face.mp4")
    assert clip.rois.shape == (30, 96, 96) and clip.warnings == ["no face in 20 of 30 frames: their mouth crops are "
                                                                 "interpolated"]


def test_large_frames_given_as_crops_are_read_in_chunks_of_few_frames(tmp_path, monkeypatch):
    """--roi on a 720p video: each 125-frame chunk became a 1.4 GB float RGB array (2.7 GB at peak for 6 s). The
    crops are made frame by frame, so smaller chunks give the same ROIs."""
    path = tmp_path / "hd.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=25:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", path],
                   check=True)
    asked, iter_video = [], preprocess_module.iter_video

    def recorded(*args, chunk, **kwargs):
        asked.append(chunk)
        return iter_video(*args, chunk=chunk, **kwargs)

    monkeypatch.setattr(preprocess_module, "iter_video", recorded)
    small = Preprocessor(PreprocessOptions(mode="v", roi=True))(path).rois
    assert asked == [8]  # 8,000,000 pixels a chunk
    monkeypatch.setattr(preprocess_module, "CROP_CHUNK_PIXELS", 10**12)
    whole = Preprocessor(PreprocessOptions(mode="v", roi=True))(path).rois
    assert asked == [8, 125] and small.shape == (50, 96, 96) and np.array_equal(small, whole)


@pytest.mark.parametrize("mode", ["av", "a"])
def test_a_video_without_sound_points_to_mode_v(media, mode):
    """A video with no audio stream in mode av or a was "no audio stream (mode av needs one)", with no word of the
    mode that reads it (a silent sound track's warning names it)."""
    with pytest.raises(NoAudioError, match=rf"silent.mp4: no audio stream \(mode {mode} needs one; --mode v reads "
                                           r"the lips alone\)$"):
        Preprocessor(PreprocessOptions(mode=mode, roi=True))(media / "silent.mp4")


def test_missing_streams_per_mode(media):
    with pytest.raises(NoAudioError, match="silent.mp4: no audio stream"):
        Preprocessor(PreprocessOptions(mode="av"))(media / "silent.mp4")
    with pytest.raises(NoVideoError, match="speech.wav: no video stream"):
        Preprocessor(PreprocessOptions(mode="v"))(media / "speech.wav")
    clip = Preprocessor(PreprocessOptions(mode="av"))(media / "speech.wav")
    assert clip.mode == "a" and clip.warnings == ["no video stream: transcribed from audio alone"]


def test_roi_inputs_skip_detection(media):
    class Refuse:
        def detect(self, *a, **k):
            raise AssertionError("--roi must not run face detection")

    clip = Preprocessor(PreprocessOptions(mode="av", roi=True), detector=Refuse())(media / "crops.mp4")
    assert clip.rois.shape == (25, 96, 96)


def test_real_face_alignment_path_finds_no_face_in_a_test_pattern(media, torch_home, monkeypatch):
    """face-alignment itself (random weights whose detector finds nothing) through the whole stage."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    clip = Preprocessor(PreprocessOptions(mode="av", device="cpu"))(media / "face.mp4")
    assert clip.mode == "a" and "no face" in clip.warnings[0]


@pytest.mark.parametrize("size", ["16x16", "2x2000"])
def test_frames_too_small_for_face_detection_have_no_face_and_say_why(media, torch_home, monkeypatch, tmp_path,
                                                                      size):
    """face-alignment's S3FD fails on frames under 32 pixels a side (a RuntimeError from deep in torch, which ended
    the whole batch), and a thin picture was scaled to 0 pixels wide before (a ZeroDivisionError): both are frames
    with no face to find, for a reason said; from 32 pixels a side faces are looked for."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    tiny = tmp_path / f"{size}.mkv"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration=0.4", "-f", "lavfi", "-i",
           "sine=frequency=300:duration=0.4", "-c:v", "ffv1", tiny)
    width, height = size.split("x")
    why = f"frames of {width} x {height} pixels are too small to find a face in (face detection needs 32 pixels a side"
    clip = Preprocessor(PreprocessOptions(mode="av", device="cpu"))(tiny)
    assert clip.mode == "a" and clip.audio is not None and len(clip.warnings) == 1, clip.warnings
    assert clip.warnings[0].startswith(why) and clip.warnings[0].endswith("): transcribed from audio alone")
    with pytest.raises(MediaError, match=re.escape(f"{tiny}: {why}")) as e:
        Preprocessor(PreprocessOptions(mode="v", device="cpu"))(tiny)
    assert str(e.value).endswith("(mode v needs the lips; --roi reads mouth crops of any size)")
    smallest = tmp_path / "32x32.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x32:rate=25:duration=0.4", "-c:v", "ffv1", smallest)
    with pytest.raises(MediaError, match="32x32.mkv: no face found in any frame"):  # looked for: S3FD takes it
        Preprocessor(PreprocessOptions(mode="v", device="cpu"))(smallest)


def test_video_alone_is_read_to_its_end_and_av_says_what_it_leaves(tmp_path):
    """3 s of video beside 1 s (or 0.001 s) of sound: mode v read only as far as the sound went, 2 s of lips lost
    without a word (and 0.001 s was "too short: 0.00 s, not one video frame", in mode av too); as mode a reads the
    audio to its end, mode v reads the video to its end. Mode av ends with the sound, and says what it leaves."""
    short, empty = tmp_path / "short.mp4", tmp_path / "empty.mp4"
    for path, seconds in ((short, 1), (empty, 0.001)):
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x96:rate=25:duration=3", "-f", "lavfi", "-i",
               f"sine=frequency=300:sample_rate=16000:duration={seconds}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
               "-c:a", "aac", path)
    cache = tmp_path / "cache"
    for again in (False, True):  # and the same from the clip cache
        for path in (short, empty):
            clip = Preprocessor(PreprocessOptions(mode="v", roi=True), cache_dir=cache)(path)
            assert clip.duration == pytest.approx(3.0, abs=0.05) and clip.rois.shape == (75, 96, 96), (path, again)
            assert clip.warnings == [] and clip.audio is None
        clip = Preprocessor(PreprocessOptions(mode="av", roi=True), cache_dir=cache)(short)
        assert clip.duration == pytest.approx(1.0, abs=0.05) and clip.rois.shape == (25, 96, 96)
        assert clip.warnings == ["the video goes on 2.0 s after the audio ends: that part is not transcribed (--mode v "
                                 "reads the video to its end)"]
        with pytest.raises(MediaError, match=re.escape(f"{empty}: the audio stream lasts 0.001 s, less than one video "
                                                       "frame, beside 3.00 s of video: nothing to read in mode av "
                                                       "(--mode v reads the video alone)")):
            Preprocessor(PreprocessOptions(mode="av", roi=True), cache_dir=cache)(empty)


def fed_pipe(path: Path, content: bytes) -> threading.Thread:
    """A named pipe at path, and a thread that writes content into it once a reader opens it."""
    os.mkfifo(path)

    def write():
        with open(path, "wb") as pipe:
            pipe.write(content)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def test_a_pipe_is_read_once_into_a_file_and_said_by_its_own_name(media, tmp_path, monkeypatch):
    """A pipe was "empty file (0 bytes)". It is copied once to a temporary file (media are read more than once: a
    probe, then the decoding), read from there under the pipe's name, and the copy is gone after."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    cache = tmp_path / "cache"
    whole = Preprocessor(PreprocessOptions(roi=True), cache_dir=cache)(media / "crops.mp4")
    for cached in (True, False):
        writer = fed_pipe(tmp_path / "pipe", (media / "crops.mp4").read_bytes())
        clip = Preprocessor(PreprocessOptions(roi=True), cache_dir=cache if cached else None)(tmp_path / "pipe")
        writer.join(10)
        assert clip.path == str(tmp_path / "pipe") and clip.mode == "av" and clip.warnings == []
        np.testing.assert_array_equal(clip.rois, whole.rois)
        np.testing.assert_array_equal(clip.audio, whole.audio)
        (tmp_path / "pipe").unlink()
    assert len(list(cache.iterdir())) == 1  # the same content: the same cache entry
    fed_pipe(tmp_path / "notes", b"this is not a video\n" * 50)
    with pytest.raises(MediaError) as e:
        Preprocessor(PreprocessOptions(roi=True))(tmp_path / "notes")
    said = str(e.value)
    assert said.startswith(f"{tmp_path / 'notes'}: not a readable media file") and "mome-pipe" not in said, said
    fed_pipe(tmp_path / "nothing", b"")
    with pytest.raises(MediaError, match="nothing: an empty pipe"):
        Preprocessor(PreprocessOptions(roi=True))(tmp_path / "nothing")
    assert list(temporary.iterdir()) == []


def test_cache_skips_detection_and_follows_the_file_content(media, tmp_path):
    calls = []

    class Counting(FakeDetector):
        def detect(self, frames, **kw):
            calls.append(len(frames))
            return super().detect(frames, **kw)

    path = tmp_path / "face.mp4"
    shutil.copy(media / "face.mp4", path)
    prep = Preprocessor(PreprocessOptions(mode="av"), cache_dir=tmp_path / "cache", detector=Counting(face_points()))
    first = prep(path)
    assert sum(calls) == 30
    second = prep(path)
    assert sum(calls) == 30, "the second run must come from the cache"
    np.testing.assert_array_equal(first.rois, second.rois)
    np.testing.assert_array_equal(first.audio, second.audio)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    shutil.copy(media / "crops.mp4", path)  # same name, other content: not the cached clip
    assert prep(path).duration == pytest.approx(1.0, abs=0.05) and sum(calls) == 30 + 25


def test_the_clip_cache_keeps_within_its_size_dropping_what_was_used_longest_ago(media, tmp_path, monkeypatch):
    """It grew without end: about 1 GB an hour of video transcribed, never taken back."""
    names = []
    for n, seconds in enumerate((1.0, 1.2, 1.4)):  # three different clips, one cache entry each
        names.append(tmp_path / f"clip{n}.wav")
        ffmpeg("-f", "lavfi", "-i", f"sine=frequency={300 + 100 * n}:duration={seconds}", names[-1])
    cache = tmp_path / "cache"
    prep = Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)
    prep(names[0])
    (first,) = cache.glob("*.npz")  # clip0's entry
    prep(names[1])
    one = max(p.stat().st_size for p in cache.glob("*.npz"))
    monkeypatch.setattr(preprocess_module, "CLIP_CACHE_BYTES", 2 * one + one // 2)  # room for two entries
    for path in cache.glob("*.npz"):  # clip0 used longest ago, clip1 after it
        os.utime(path, (1, 1 if path == first else 2))
    prep(names[0])  # read from the cache: now the most recent
    prep(names[2])  # a third entry: the one used longest ago (clip1's) goes
    assert len(list(cache.glob("*.npz"))) == 2 and first.exists()
    calls = []
    monkeypatch.setattr(preprocess_module, "decode_audio", lambda *a, **k: calls.append(1) or np.zeros(16000, "f4"))
    prep(names[0]), prep(names[2])
    assert calls == []  # both still cached


def test_the_clip_cache_keeps_the_entry_just_written_over_one_whose_time_is_in_the_future(media, tmp_path,
                                                                                           monkeypatch):
    """The entry with the latest time was the one kept, taken for the one just written: an entry dated in the future
    (a cache copied from a machine whose clock is ahead) stayed, and every new entry was dropped as soon as written."""
    cache = tmp_path / "cache"
    prep = Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)
    prep(media / "speech.wav")
    (ahead,) = cache.glob("*.npz")
    later = time.time() + 365 * 86400
    os.utime(ahead, (later, later))
    monkeypatch.setattr(preprocess_module, "CLIP_CACHE_BYTES", ahead.stat().st_size * 3 // 2)  # room for one entry
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=500:duration=1", tmp_path / "other.wav")
    prep(tmp_path / "other.wav")
    (kept,) = cache.glob("*.npz")
    assert kept != ahead


def test_a_killed_writers_temporary_file_is_trimmed_once_stale_and_a_live_ones_is_kept(media, tmp_path):
    """A writer killed while writing an entry (SIGKILL, the OOM killer) left its temporary file, as large as the clip,
    in the cache for good: not an entry, so never trimmed, yet counted in `mome download --list`'s size."""
    cache = tmp_path / "cache"
    cache.mkdir()
    stale, live = cache / ".abc-v6-a-sfd-720.npz.k1l2m3.tmp", cache / ".def-v6-a-sfd-720.npz.n4o5p6.tmp"
    stale.write_bytes(b"\0" * 1000)
    live.write_bytes(b"\0" * 1000)
    days_ago = time.time() - 2 * 86400  # a writer has long ended
    os.utime(stale, (days_ago, days_ago))
    Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)(media / "speech.wav")
    assert not stale.exists() and live.exists() and len(list(cache.glob("*.npz"))) == 1


@pytest.mark.parametrize("order", [("a", "av"), ("av", "a")])
def test_the_av_fallback_warning_is_said_to_av_runs_alone_whichever_filled_the_cache(media, tmp_path, order):
    # an audio-only file in mode av is read as in mode a and shares its cache entry
    fallback = ["no video stream: transcribed from audio alone"]
    cache = tmp_path / "cache"
    for mode in order + order:
        clip = Preprocessor(PreprocessOptions(mode=mode), cache_dir=cache)(media / "speech.wav")
        assert clip.mode == "a" and clip.warnings == (fallback if mode == "av" else []), (order, mode)
    assert len(list(cache.iterdir())) == 1


def test_a_copy_of_a_cached_file_is_read_under_its_own_name(media, tmp_path):
    copy = tmp_path / "copy.wav"
    shutil.copy(media / "speech.wav", copy)
    prep = Preprocessor(PreprocessOptions(mode="a"), cache_dir=tmp_path / "cache")
    assert prep(media / "speech.wav").path == str(media / "speech.wav")
    assert prep(copy).path == str(copy) and len(list((tmp_path / "cache").iterdir())) == 1


def test_a_file_written_to_while_it_was_read_is_not_cached_under_the_content_it_had_before(media, tmp_path,
                                                                                           monkeypatch):
    """A recording still going on: the clip decoded is not the content that was hashed, so a later file holding that
    content must not be given this clip."""
    path = tmp_path / "growing.wav"
    shutil.copy(media / "speech.wav", path)
    before = path.read_bytes()
    decode = preprocess_module.decode_audio

    def decode_then_append(*args, **kwargs):
        audio = decode(*args, **kwargs)
        with open(path, "ab") as f:
            f.write(b"\0" * 64)
        return audio

    monkeypatch.setattr(preprocess_module, "decode_audio", decode_then_append)
    cache = tmp_path / "cache"
    clip = Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)(path)
    assert clip.warnings == ["the file changed while it was read: its clip is not cached"]
    assert not list(cache.glob("*.npz"))
    monkeypatch.setattr(preprocess_module, "decode_audio", decode)
    path.write_bytes(before)
    assert Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)(path).warnings == []
    assert len(list(cache.glob("*.npz"))) == 1  # a file left alone is cached as before


@pytest.mark.parametrize("damage", ["cut in half", "cut short by 10 bytes", "zero bytes", "a byte changed",
                                    "random bytes after a zip's signature"])
def test_a_damaged_cache_entry_is_made_again_not_a_traceback(media, tmp_path, damage):
    """A cut-short entry (a full disk, a copy interrupted) raised zipfile.BadZipFile or EOFError out of transcribe."""
    cache = tmp_path / "cache"
    first = Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)(media / "speech.wav")
    (entry,) = cache.glob("*.npz")
    whole = entry.read_bytes()
    middle = len(whole) // 2
    entry.write_bytes({"cut in half": whole[:middle], "cut short by 10 bytes": whole[:-10], "zero bytes": b"",
                       "a byte changed": whole[:middle] + bytes([whole[middle] ^ 0xFF]) + whole[middle + 1 :],
                       "random bytes after a zip's signature": b"PK\x03\x04" + os.urandom(4000)}[damage])
    again = Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)(media / "speech.wav")
    np.testing.assert_array_equal(again.audio, first.audio)
    assert again.warnings == [] and entry.read_bytes() == whole  # made again, and written over the damaged one


@pytest.mark.parametrize("link", ["dangling", "to itself"])
def test_a_link_in_a_cache_entrys_place_is_written_over(media, tmp_path, link):
    """A link to itself there made atomic_write's stat raise ELOOP: the clip cache was said unwritable, and left off
    for the rest of the run."""
    cache = tmp_path / "cache"
    first = Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)(media / "speech.wav")
    (entry,) = cache.glob("*.npz")
    whole = entry.read_bytes()
    entry.unlink()
    entry.symlink_to(entry if link == "to itself" else tmp_path / "gone")
    again = Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)(media / "speech.wav")
    np.testing.assert_array_equal(again.audio, first.audio)
    assert again.warnings == [] and not entry.is_symlink() and entry.read_bytes() == whole


def test_a_folder_in_a_cache_entrys_place_is_said_and_the_cache_stays_on_for_other_clips(media, tmp_path,
                                                                                         monkeypatch):
    """It was said as a cache that cannot be written at all, naming the cache's folder, and the cache was turned off
    for the rest of the run; trimming, past the size limit, failed on it too."""
    cache = tmp_path / "cache"
    Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)(media / "speech.wav")
    (entry,) = cache.glob("*.npz")
    entry.unlink()
    (entry / "inside").mkdir(parents=True)
    monkeypatch.setattr(preprocess_module, "CLIP_CACHE_BYTES", 1)  # every save trims
    prep = Preprocessor(PreprocessOptions(mode="a"), cache_dir=cache)
    clip = prep(media / "speech.wav")
    assert clip.warnings == [f"cannot write the clip cache entry {entry}: a folder is in its place (delete it to "
                             "cache this clip)"] and clip.audio is not None
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=500:duration=1", tmp_path / "other.wav")
    assert prep(tmp_path / "other.wav").warnings == []
    assert len([p for p in cache.glob("*.npz") if p.is_file()]) == 1 and (entry / "inside").is_dir()


def test_a_cache_entry_holding_another_entrys_bytes_is_not_taken_for_this_file(media, tmp_path):
    """Another file's clip copied over an entry was read as this file's: a wrong transcript, without a word."""
    cache = tmp_path / "cache"
    prep = Preprocessor(PreprocessOptions(mode="av"), cache_dir=cache, detector=FakeDetector(face_points()))
    prep(media / "face.mp4")  # mode av: audio and mouth crops
    (entry,) = cache.glob("*.npz")
    speech = prep(media / "speech.wav")  # mode a (no video): another entry
    (other,) = set(cache.glob("*.npz")) - {entry}
    shutil.copy(entry, other)
    again = Preprocessor(PreprocessOptions(mode="av"), cache_dir=cache)(media / "speech.wav")
    assert again.mode == "a" and again.rois is None
    np.testing.assert_array_equal(again.audio, speech.audio)


def test_a_video_read_in_chunks_is_tracked_by_one_tracker(media, monkeypatch):
    from mome_cli import preprocess

    monkeypatch.setattr(preprocess, "CHUNK_FRAMES", 4)
    detector = FakeDetector(face_points())
    clip = Preprocessor(PreprocessOptions(mode="v"), detector=detector)(media / "face.mp4")
    assert len(detector.trackers) == -(-len(clip.rois) // 4) > 1
    assert all(t is detector.trackers[0] for t in detector.trackers) and detector.trackers[0] is not None


def test_mouth_is_centred_in_the_crop_of_a_posed_face(media):
    """With landmarks on a known face, the ROI centre samples the mouth region of the frame."""
    points = face_points()
    clip = Preprocessor(PreprocessOptions(mode="v"), detector=FakeDetector(points))(media / "face.mp4")
    mouth = points[MOUTH_POINTS].mean(axis=0)
    assert 0 < mouth[0] < 320 and 0 < mouth[1] < 240
    assert clip.rois[:, 40:56, 40:56].std() > 0  # real picture content where the mouth is, not black padding


def test_an_anamorphic_video_reaches_face_detection_and_the_crops_as_it_is_shown(media, tmp_path):
    """face.mp4 stored as 160 x 240 frames of pixels twice as wide as high (as DVDs and HDV store wide pictures): its
    frames reached face detection squeezed to half their width, faces half as wide as they are, and were cropped so.
    Now they come as a player shows them, and the mouth crops of a face posed on the picture are those of face.mp4."""
    anamorphic = tmp_path / "anamorphic.mp4"
    ffmpeg("-i", media / "face.mp4", "-vf", "scale=160:240,setsar=2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-c:a", "copy", anamorphic)
    seen = []

    class Seeing(FakeDetector):
        def detect(self, frames, **kw):
            seen.append(frames.shape[1:])
            return super().detect(frames, **kw)

    clip = Preprocessor(PreprocessOptions(mode="v"), detector=Seeing(face_points()))(anamorphic)
    square = Preprocessor(PreprocessOptions(mode="v"), detector=FakeDetector(face_points()))(media / "face.mp4")
    assert set(seen) == {(240, 320, 3)} and clip.rois.shape == square.rois.shape == (30, 96, 96)
    difference = np.abs(clip.rois.astype(int) - square.rois.astype(int)).mean()
    assert difference < 6, difference  # the same picture, but for half its columns and two encodings


def test_missing_face_alignment_weights_exit_4_naming_the_download(media, tmp_path, monkeypatch):
    from mome_cli.hub import MissingModelError

    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("MOME_HOME", str(tmp_path / "home"))
    with pytest.raises(MissingModelError, match=r"s3fd-619a316812\.pth.*mome download demo.*--roi") as e:
        Preprocessor(PreprocessOptions(mode="av"))(media / "face.mp4")
    assert e.value.exit_code == 4
    assert "TORCH_HOME" not in __import__("os").environ


def test_face_alignment_weights_that_cannot_be_loaded_are_one_error_naming_the_fix(media, torch_home, tmp_path,
                                                                                   monkeypatch):
    """A file in the weights' place that is not them (`mome download` keeps one that fails its checksum when it
    cannot fetch a good one): torch's unpickling error came out as a traceback."""
    import shutil as sh

    from mome_cli.hub import UnusableModelError

    sh.copytree(torch_home, tmp_path / "home" / "torch")
    for weights in (tmp_path / "home" / "torch").rglob("*.pth"):
        weights.write_bytes(b"<html>not found</html>")
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("MOME_HOME", str(tmp_path / "home"))
    with pytest.raises(UnusableModelError, match=r"face-alignment's weights in .*checkpoints cannot be loaded "
                                                 r"\(.*\): delete .*s3fd.* there and run `mome download demo`"):
        Preprocessor(PreprocessOptions(mode="av", device="cpu"))(media / "face.mp4")


@pytest.mark.parametrize("user_torch_home", [False, True])
def test_weights_in_mome_home_are_found_with_or_without_torch_home(media, torch_home, tmp_path, monkeypatch,
                                                                    user_torch_home):
    """`mome download` puts the weights in mome's cache; a TORCH_HOME of the user's that lacks them does not hide
    them (it is looked in first, then mome's cache), and it is left as it was."""
    import os
    import shutil as sh

    sh.copytree(torch_home, tmp_path / "home" / "torch")
    if user_torch_home:
        (tmp_path / "own" / "hub" / "checkpoints").mkdir(parents=True)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "own"))
    else:
        monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("MOME_HOME", str(tmp_path / "home"))
    clip = Preprocessor(PreprocessOptions(mode="av", device="cpu"))(media / "face.mp4")
    assert clip.mode == "a" and "no face" in clip.warnings[0]  # face-alignment ran, from mome's cache
    assert os.environ.get("TORCH_HOME") == (str(tmp_path / "own") if user_torch_home else None)


# -- reading ahead ---------------------------------------------------------------------------------------------------


def ffmpeg_children() -> list[int]:
    """This process's live ffmpeg children (zombies, ended and not yet waited for, left out)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            name, fields = rest.rsplit(") ", 1)
        except OSError:  # ended meanwhile
            continue
        state, ppid = fields.split()[:2]
        if name == "ffmpeg" and int(ppid) == os.getpid() and state != "Z":
            found.append(int(pid))
    return found


def test_read_ahead_gives_results_in_order_from_one_thread_at_most_n_ahead_with_errors_in_their_place():
    calls, threads, takes = [], set(), [0]

    def square(i):
        calls.append((i, takes[0]))  # the item, and how many take() calls had begun when it started
        threads.add(threading.current_thread())
        if i == 4:
            raise ValueError("4 is bad")
        return i * i

    with ReadAhead(square, range(8), ahead=3) as ahead:
        wait_for(lambda: len(calls) >= 3)
        time.sleep(0.2)
        assert len(calls) == 3  # three read before anything is taken, and no more
        results = []
        for _ in range(8):
            takes[0] += 1
            try:
                results.append(ahead.take())
            except ValueError as e:
                results.append(str(e))
    assert results == [0, 1, 4, 9, "4 is bad", 25, 36, 49]  # the items after the bad one are still read
    assert [i for i, _ in calls] == list(range(8))
    assert all(i < began + 3 for i, began in calls), calls  # item i waits for the take() of item i - 3
    (thread,) = threads
    assert thread is not threading.main_thread() and not thread.is_alive()


def test_read_ahead_0_reads_each_item_at_its_take():
    calls, takes = [], [0]
    with ReadAhead(lambda i: calls.append((i, takes[0])) or -i, range(3), ahead=0) as lazy:
        time.sleep(0.2)
        assert calls == []  # nothing before the first take()
        results = []
        for _ in range(3):
            takes[0] += 1
            results.append(lazy.take())
            time.sleep(0.1)
            assert len(calls) == takes[0]  # and nothing beyond the item taken
    assert results == [0, -1, -2] and calls == [(0, 1), (1, 2), (2, 3)]


def test_read_ahead_left_on_an_error_starts_nothing_more_and_stops_the_call_in_flight_then_waits_for_it():
    """Ctrl-C, or a model that fails to load, while a long read is in flight: nothing more is read, the read in flight
    is told to stop (the event it watches is set) and the caller leaves as soon as it has, with no thread left
    running: a thread left inside torch while the interpreter exits aborts the process."""
    before = set(threading.enumerate())
    stop, reading, calls, ends = threading.Event(), threading.Event(), [], []

    def slow(i):  # ten seconds of work that looks at `stop` between its steps, as face detection does
        calls.append(i)
        reading.set()
        for _ in range(1000):
            if stop.is_set():
                ends.append("stopped")
                raise Stopped
            time.sleep(0.01)
        ends.append("finished")
        return i

    started = time.monotonic()
    with pytest.raises(KeyError):
        with ReadAhead(slow, range(5), ahead=5, stop=stop):
            assert reading.wait(10)
            raise KeyError("the caller failed")  # the first item is still being read
    assert time.monotonic() - started < 5  # not the 10 s of the read
    assert set(threading.enumerate()) == before  # the thread has ended by the time the caller leaves
    assert calls == [0] and ends == ["stopped"]  # nothing more was read, and the read in flight was stopped


def test_read_ahead_holds_at_most_its_budget_of_results_not_yet_taken():
    """cost(result) and a budget: no item is started while the results read and not taken cost more than it, so a
    batch of long clips is not held twice; each take() lets the reading go on."""
    started = []
    with ReadAhead(lambda i: started.append(i) or i, [5, 5, 5, 1, 1, 1], ahead=6, cost=float, budget=8) as ahead:
        wait_for(lambda: len(started) >= 2)
        time.sleep(0.2)
        assert started == [5, 5]  # 10 held after the second: over 8, the third waits
        assert ahead.take() == 5
        wait_for(lambda: len(started) >= 3)
        time.sleep(0.2)
        assert started == [5, 5, 5]  # 5 + 5 held again
        assert [ahead.take() for _ in range(5)] == [5, 5, 1, 1, 1]
    assert started == [5, 5, 5, 1, 1, 1]


def test_a_preprocessor_told_to_stop_ends_at_the_next_detection_batch_and_caches_nothing(media, torch_home,
                                                                                          monkeypatch, tmp_path):
    """Real face-alignment on a 3 s video (38 batches of face detection on the CPU): the stop event set while the
    first batch runs ends the call after it, with Stopped, and no cache file (not even a temporary one) is left."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=3", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           tmp_path / "long.mp4")
    monkeypatch.setattr(preprocess_module, "CHUNK_FRAMES", 25)  # three chunks: ffmpeg is still writing at the stop
    stop = threading.Event()
    preprocess = Preprocessor(PreprocessOptions(mode="v", device="cpu"), cache_dir=tmp_path / "cache", stop=stop)
    batches = []
    detect_from_batch = preprocess.detector.fa.face_detector.detect_from_batch

    def first_batch_then_stop(batch):
        batches.append(len(batch))
        stop.set()  # as ReadAhead.close() does from the caller's thread
        return detect_from_batch(batch)

    monkeypatch.setattr(preprocess.detector.fa.face_detector, "detect_from_batch", first_batch_then_stop)
    with pytest.raises(Stopped) as stopped:
        preprocess(tmp_path / "long.mp4")
    assert batches == [2]  # one batch of 2 frames of the 75 (on the CPU), then stopped
    # ffmpeg has ended, though the exception (its traceback holding the reading generator) is still alive
    assert stopped.value is not None and ffmpeg_children() == []
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_read_ahead_left_after_the_last_take_leaves_no_thread():
    before = set(threading.enumerate())
    with ReadAhead(lambda i: i, range(3), ahead=2) as ahead:
        assert [ahead.take() for _ in range(3)] == [0, 1, 2]
    assert set(threading.enumerate()) == before

def test_read_ahead_costs_and_budgets_that_would_hang_it_are_errors():
    with pytest.raises(ValueError, match="budget"):
        ReadAhead(str, [], ahead=1, budget=float("nan"))
    with pytest.raises(ValueError, match="budget"):
        ReadAhead(str, [], ahead=1, budget=-1)

    def cost(result):  # an error, then costs that would leave the budget's accounting NaN or stuck
        if result == 1:
            raise KeyError("no cost")
        return {2: float("inf"), 3: float("nan"), 4: -1.0}.get(result, 1.0)

    with ReadAhead(lambda i: i, range(6), ahead=6, cost=cost, budget=2) as ahead:
        results = []
        for _ in range(6):
            try:
                results.append(ahead.take())
            except (KeyError, ValueError) as e:
                results.append(type(e).__name__)
    assert results == [0, "KeyError", "ValueError", "ValueError", "ValueError", 5]


def test_read_ahead_whose_items_fail_at_once_leaves_no_thread():
    def items():
        raise OSError("cannot list them")
        yield

    before = set(threading.enumerate())
    with pytest.raises(OSError, match="cannot list"):
        ReadAhead(str, items(), ahead=2)
    assert set(threading.enumerate()) == before


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_more_ctrl_cs_while_the_read_in_flight_ends_wait_for_it_then_raise_keyboard_interrupt():
    """The first Ctrl-C ends the run; more, while close() waits for the read in flight (one that does not watch
    `stop`), must not cut the wait short: an interrupted join lets the interpreter exit under the thread, which
    aborts the process when the thread is inside torch."""
    done = run_python("""
        import os, signal, threading, time
        from mome_cli.preprocess import ReadAhead
        taking, sent, finished = threading.Event(), threading.Event(), threading.Event()

        def read(i):  # does not look at `stop`: ends 0.3 s after the last Ctrl-C
            sent.wait(30)
            time.sleep(0.3)
            finished.set()
            return i

        def ctrl_c(times=3):
            taking.wait(30)
            for _ in range(times):
                time.sleep(0.3)
                os.kill(os.getpid(), signal.SIGINT)
            sent.set()

        threading.Thread(target=ctrl_c, daemon=True).start()
        try:
            with ReadAhead(read, [0], ahead=1) as ahead:
                taking.set()
                ahead.take()
        except KeyboardInterrupt:
            print("interrupted; the read had ended:", finished.is_set())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "interrupted; the read had ended: True"


def test_a_read_ahead_never_closed_does_not_hold_the_interpreter_at_exit():
    done = run_python("""
        from mome_cli.preprocess import ReadAhead
        ahead = ReadAhead(lambda i: i, range(3), ahead=1)
        print(ahead.take())
    """, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr


def test_a_read_ahead_made_in_a_worker_thread_serves_it_after_the_main_thread_has_returned():
    """Only the thread that takes going away ends the reader: a worker that outlives the main thread (the
    interpreter waits for it) still gets every item."""
    done = run_python("""
        import threading, time
        from mome_cli.preprocess import ReadAhead

        def work():
            time.sleep(0.5)  # the main thread has returned by now
            with ReadAhead(lambda i: i * 10, range(3), ahead=2) as ahead:
                print([ahead.take() for _ in range(3)], flush=True)

        threading.Thread(target=work).start()
    """, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "[0, 10, 20]", done.stderr


def test_an_item_skipped_because_stop_was_set_raises_in_take_instead_of_waiting_forever():
    stop = threading.Event()
    stop.set()  # by someone else than close(): say, a signal handler sharing the Preprocessor's event
    raised = []
    with ReadAhead(lambda i: i, range(3), ahead=2, stop=stop) as ahead:
        def take():
            try:
                ahead.take()
            except BaseException as e:  # noqa: BLE001
                raised.append(e)

        taker = threading.Thread(target=take, daemon=True)  # a take() that never returns fails the test, not hangs it
        taker.start()
        taker.join(10)
    assert not taker.is_alive(), "take() still waiting"
    assert len(raised) == 1 and isinstance(raised[0], CancelledError)


def test_a_take_after_close_raises_instead_of_waiting_forever():
    ahead = ReadAhead(lambda i: i, range(5), ahead=1)
    assert ahead.take() == 0
    ahead.close()
    raised = []

    def take():
        for _ in range(2):  # the item queued before close(), then one queued after it
            try:
                ahead.take()
            except BaseException as e:  # noqa: BLE001
                raised.append(type(e).__name__)

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    taker.join(10)
    assert not taker.is_alive(), "take() still waiting"
    assert raised == ["CancelledError", "CancelledError"]


def test_items_that_fail_midway_lose_no_result_read_before():
    def items():
        yield 0
        yield 1
        raise OSError("the listing broke")

    results = []
    with ReadAhead(lambda i: i * 10, items(), ahead=2) as ahead:
        for _ in range(4):
            try:
                results.append(ahead.take())
            except (OSError, IndexError) as e:
                results.append(type(e).__name__)
    assert results == [0, 10, "OSError", "IndexError"]


def test_a_timeout_raised_by_a_read_is_raised_by_its_take_not_mistaken_for_a_wait():
    def read(i):
        if i == 1:
            raise TimeoutError("the network share did not answer")
        return i

    with ReadAhead(read, range(3), ahead=1) as ahead:
        assert ahead.take() == 0
        with pytest.raises(TimeoutError, match="network share"):
            ahead.take()
        assert ahead.take() == 2
