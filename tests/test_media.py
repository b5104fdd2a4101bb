"""Media decoding and segmenting on media made by ffmpeg in the test."""

import dataclasses
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mome_cli.media import (SAMPLE_RATE, VIDEO_FPS, MediaError, NoAudioError, NoVideoError, decode_audio,
                            decode_video, iter_video, probe, split_at_pauses)

pytestmark = pytest.mark.skipif(subprocess.run(["which", "ffmpeg"], capture_output=True).returncode != 0,
                                reason="ffmpeg is not installed")


def make(path, video=None, audio=None, extra=()):
    """Run ffmpeg with lavfi sources; video/audio are lavfi graphs."""
    args = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y"]
    for graph in (video, audio):
        if graph:
            args += ["-f", "lavfi", "-i", graph]
    if video:
        args += ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    args += [*extra, str(path)]
    subprocess.run(args, check=True)
    return path


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("seconds", [0.5, 45])
def test_lengths_rates_and_frame_counts(tmp_path, fps, seconds):
    path = make(tmp_path / "clip.mp4", f"testsrc2=size=64x48:rate={fps}:duration={seconds}",
                f"sine=frequency=300:sample_rate=44100:duration={seconds}", ["-c:a", "aac", "-shortest"])
    info = probe(path)
    assert info.has_audio and info.has_video and info.fps == fps
    assert info.duration == pytest.approx(seconds, abs=0.05)
    audio = decode_audio(path, info=info)
    video = decode_video(path, info=info)
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == round(info.duration * SAMPLE_RATE)
    assert video.shape == (round(info.duration * VIDEO_FPS), 48, 64, 3) and video.dtype == np.uint8
    spectrum = np.abs(np.fft.rfft(audio[: SAMPLE_RATE // 4]))  # 4 Hz bins
    assert np.argmax(spectrum) * SAMPLE_RATE / (SAMPLE_RATE // 4) == pytest.approx(300, abs=4)  # resampled right


@pytest.mark.parametrize("fps", [25, 30])
def test_audio_and_video_are_aligned_within_one_frame(tmp_path, fps):
    """A white flash and a beep both at t = 1.3 s come out at the same instant."""
    flash = f"color=black:size=64x48:rate={fps}:duration=3,drawbox=enable='between(t,1.3,1.5)':color=white:t=fill"
    beep = "sine=frequency=1000:sample_rate=48000:duration=3,volume=enable='not(between(t,1.3,1.5))':volume=0"
    path = make(tmp_path / "sync.mp4", flash, beep, ["-c:a", "aac", "-shortest"])
    video = decode_video(path)
    audio = decode_audio(path)
    flash_at = np.argmax(video.mean(axis=(1, 2, 3)) > 128) / VIDEO_FPS
    beep_at = np.argmax(np.abs(audio) > 0.05) / SAMPLE_RATE  # lavfi sine: amplitude 1/8
    assert flash_at == pytest.approx(1.3, abs=1 / VIDEO_FPS)
    assert abs(flash_at - beep_at) <= 1 / VIDEO_FPS


def test_a_window_and_chunks(tmp_path):
    path = make(tmp_path / "clip.mp4", "testsrc2=size=64x48:rate=30:duration=4",
                "sine=frequency=300:duration=4", ["-c:a", "aac", "-shortest"])
    assert len(decode_audio(path, start=1.0, duration=2.0)) == 2 * SAMPLE_RATE
    chunks = list(iter_video(path, start=1.0, duration=2.0, chunk=16))
    assert [len(c) for c in chunks] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), decode_video(path)[25:75])
    assert decode_video(path, max_height=24).shape[1:] == (24, 32, 3)


def test_bad_inputs_give_one_clear_line(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    good = make(tmp_path / "good.mp4", "testsrc2=size=64x48:rate=25:duration=2", "sine=duration=2",
                ["-c:a", "aac", "-shortest"])
    (tmp_path / "cut.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    silent_video = make(tmp_path / "silent.mp4", "testsrc2=size=64x48:rate=25:duration=1")
    speech_only = make(tmp_path / "speech.wav", None, "sine=duration=1")
    cases = {
        tmp_path / "missing.mp4": "no such file",
        tmp_path: "is a folder",
        tmp_path / "empty.mp4": "empty file",
        tmp_path / "notes.mp4": "not a readable media file",
    }
    for path, problem in cases.items():
        with pytest.raises(MediaError, match=problem) as e:
            probe(path)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    with pytest.raises(MediaError, match="cut.mp4"):  # a truncated container fails on probe or decode
        decode_video(tmp_path / "cut.mp4")
    with pytest.raises(NoAudioError, match="no audio stream"):
        decode_audio(silent_video)
    with pytest.raises(NoVideoError, match="no video stream"):
        decode_video(speech_only)


def test_an_mp4_cut_before_its_index_says_so_without_ffmpegs_file_url(tmp_path):
    """The first half of an mp4 (its moov atom at the end) was "not a readable media file (file:/abs/cut.mp4: Invalid
    data found when processing input)": the name again, as ffmpeg's file: URL, and no word of why."""
    good = make(tmp_path / "good.mp4", "testsrc2=size=64x48:rate=25:duration=2", "sine=duration=2",
                ["-c:a", "aac", "-shortest"])
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MediaError) as e:
        probe(cut)
    assert str(e.value) == (f"{cut}: not a readable media file (Invalid data found when processing input; no moov "
                            "atom, the index an mp4 writes at its end: a download or recording cut short?)")


def test_a_pipe_or_a_device_is_not_called_an_empty_file(tmp_path):
    """A named pipe (or /dev/stdin fed by `cat x.mp4 |`) has no size: it was "empty file (0 bytes)"; so was /dev/null.
    probe reads a file more than once (and then it is decoded): a pipe is said to be one (Preprocessor copies it)."""
    fifo = tmp_path / "talk.mp4"
    os.mkfifo(fifo)
    with pytest.raises(MediaError, match="talk.mp4: a pipe, not a file: it can be read once, and media are read more "
                                         "than once"):
        probe(fifo)  # said without opening it, which would wait for a writer
    with pytest.raises(MediaError, match="/dev/null: not a regular file"):
        probe(Path("/dev/null"))


def noise(seconds, rng):
    return (0.3 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def silence(seconds):
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def test_long_audio_is_cut_in_its_pauses():
    rng = np.random.default_rng(0)
    audio = np.concatenate([noise(12, rng), silence(0.6), noise(17.4, rng), silence(0.8), noise(19.2, rng)])
    segments = split_at_pauses(audio)
    # cut in the two pauses (12.0-12.6 s, 30.0-30.8 s), each side's speech keeping 0.24 s of them
    assert [(round(s.start, 2), round(s.end, 2), s.speech) for s in segments] == [
        (0.0, 12.24, True), (12.24, 12.36, False), (12.36, 30.24, True), (30.24, 30.56, False), (30.56, 50.0, True)]
    assert all(s.duration <= 20.0 for s in segments)
    for a, b in zip(segments, segments[1:]):
        assert a.end == b.start and round(a.end * VIDEO_FPS, 6) == int(round(a.end * VIDEO_FPS))


@pytest.mark.parametrize("offset", [0.005, 0.02, -0.2])
def test_a_dc_offset_does_not_hide_the_pauses(offset):
    """A constant offset is no sound: with 0.5% of full scale, pauses were no longer silent and no cut was made."""
    rng = np.random.default_rng(0)
    audio = np.concatenate([noise(12, rng), silence(0.6), noise(17.4, rng), silence(0.8), noise(19.2, rng)])
    cuts = [(s.start, s.end, s.speech) for s in split_at_pauses(audio)]
    assert [(s.start, s.end, s.speech) for s in split_at_pauses(audio + np.float32(offset))] == cuts


def test_every_pause_between_speech_ends_a_segment():
    rng = np.random.default_rng(3)
    audio = np.concatenate([silence(0.4), noise(2, rng), silence(0.32), noise(1.5, rng), silence(0.08), noise(2, rng),
                            silence(0.4)])
    speech = [(s.start, s.end) for s in split_at_pauses(audio) if s.speech]
    assert speech == [(0.16, 2.56), (2.56, 6.56)]  # not at 0.08 s; 0.24 s of the silence kept at either end
    packed = split_at_pauses(audio, every_pause=False)  # only what is longer than the limit is cut: whole here,
    assert [(s.start, s.end, s.speech) for s in packed] == [(0.0, pytest.approx(6.7), True)]  # its silence too


def test_silence_around_speech_beyond_a_margin_is_not_decoded():
    """A clip's first seconds of silence, or a long pause, went into the segment beside them: its times then
    bounded the silence, not the speech, and the model (trained on utterances with a few tenths of a second of
    silence around them) misread the speech that followed (the example clip's first words after 2 s of silence:
    "dead m" for "in other words")."""
    rng = np.random.default_rng(5)
    audio = np.concatenate([silence(2), noise(1.6, rng), silence(4), noise(3, rng), silence(3)])
    segments = split_at_pauses(audio)
    assert [(s.start, s.end, s.speech) for s in segments] == [
        (0.0, 1.76, False), (1.76, 3.84, True), (3.84, 7.36, False), (7.36, 10.84, True), (10.84, 13.6, False)]
    alone = split_at_pauses(np.concatenate([noise(1.6, rng), silence(0.2)]))  # within the margin: kept
    assert [(s.start, s.end, s.speech) for s in alone] == [(0.0, 1.8, True)]


def test_audio_without_pauses_is_still_cut_within_the_limit():
    rng = np.random.default_rng(1)
    segments = split_at_pauses(noise(45, rng))
    assert len(segments) == 3 and all(s.duration <= 20.0 for s in segments)
    assert segments[0].start == 0 and segments[-1].end == pytest.approx(45.0)


def test_short_audio_is_one_segment_and_silence_is_marked():
    rng = np.random.default_rng(2)
    assert len(split_at_pauses(noise(3, rng))) == 1
    quiet = np.concatenate([noise(15, rng), silence(25)])
    segments = split_at_pauses(quiet)
    assert segments[0].speech and not segments[-1].speech


def test_silence_is_also_what_is_quiet_in_absolute_terms():
    """A muted recording has no loud part for the relative threshold to go by: all of it is silence, nothing is
    decoded. A short utterance in a minute of faint room noise (-70 dBFS) is cut out of it."""
    assert not any(s.speech for s in split_at_pauses(np.zeros(30 * SAMPLE_RATE, np.float32)))
    rng = np.random.default_rng(4)
    room = lambda seconds: (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 10 ** (-70 / 20)).astype(np.float32)  # noqa
    audio = np.concatenate([room(29), noise(2, rng), room(29)])
    segments = split_at_pauses(audio)
    speech = [s for s in segments if s.speech]
    assert len(speech) == 1 and speech[0].start <= 29 and speech[0].end >= 31, segments  # the rest is not decoded
    assert sum(s.duration for s in segments if not s.speech) > 40, segments


def test_a_portrait_phone_video_comes_out_upright_not_squashed(tmp_path):
    """Phones store landscape frames and a rotation; ffmpeg turns them upright, so width and height swap."""
    stored = make(tmp_path / "stored.mp4", "testsrc2=size=160x96:rate=25:duration=1")
    rotated = tmp_path / "portrait.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", stored, "-c", "copy", "-metadata:s:v:0",
                    "rotate=90", rotated], check=True)
    info = probe(rotated)
    assert (info.width, info.height) == (96, 160)
    upright = decode_video(rotated, info=info)
    assert upright.shape == (25, 160, 96, 3)
    turned = np.rot90(decode_video(stored), k=1, axes=(1, 2))  # the stored frames turned a quarter turn
    assert np.abs(upright.astype(int) - turned.astype(int)).mean() < 2


def test_a_picture_too_thin_to_scale_down_keeps_a_pixel_of_width(tmp_path):
    """2 x 2000 pixels scaled to 720 high was 0.72 wide, rounded to 0: a ZeroDivisionError for the whole batch."""
    thin = tmp_path / "thin.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=2x2000:rate=25:duration=0.2", "-c:v", "ffv1", thin], check=True)
    info = probe(thin)
    assert (info.width, info.height) == (2, 2000)
    frames = decode_video(thin, info=info, max_height=720)
    assert frames.shape == (5, 720, 1, 3) and frames.any()
    with pytest.raises(MediaError, match="thin.mkv: the video stream gives no picture size"):
        decode_video(thin, info=dataclasses.replace(info, width=0))


@pytest.mark.parametrize("rotate", [0, 90])
def test_non_square_pixels_come_out_as_a_player_shows_them(tmp_path, rotate):
    """A 100 x 100 square in a 320 x 240 picture, stored anamorphic: 160 x 240 frames of pixels twice as wide as high
    (sample aspect ratio 2:1). It came out 160 x 240, the square 50 wide: face detection saw faces squeezed by half."""
    stored, anamorphic = tmp_path / "stored.mp4", tmp_path / "anamorphic.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=black:size=320x240:rate=25:duration=0.2,drawbox=x=110:y=70:w=100:h=100:color=white:t=fill",
                    "-vf", "scale=160:240,setsar=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", stored], check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", stored, "-c", "copy", "-metadata:s:v:0",
                    f"rotate={rotate}", anamorphic], check=True)  # as a phone turned upright stores it
    info = probe(anamorphic)
    assert (info.width, info.height) == ((320, 240) if rotate == 0 else (240, 320))
    frames = decode_video(anamorphic, info=info)
    assert frames.shape == (5, info.height, info.width, 3)
    rows, columns = np.nonzero(frames[0, :, :, 0] > 128)  # the square
    assert np.ptp(rows) + 1 == pytest.approx(100, abs=2) and np.ptp(columns) + 1 == pytest.approx(100, abs=2)
    assert rows.mean() == pytest.approx(info.height / 2, abs=2)  # centred, turned or not
    assert columns.mean() == pytest.approx(info.width / 2, abs=2)


@pytest.mark.parametrize("name", ["-starts-with-a-dash.mp4", "rec:01.mp4", "ünï cödé.mp4"])
def test_file_names_that_look_like_options_or_protocols_are_files(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    make(tmp_path / "x.mp4", "testsrc2=size=64x48:rate=25:duration=1", "sine=frequency=300:duration=1",
         ["-c:a", "aac", "-shortest"]).rename(tmp_path / name)
    info = probe(name)
    assert decode_video(name, info=info).shape == (25, 48, 64, 3) and len(decode_audio(name, info=info)) > 0


def test_a_flood_of_ffmpeg_messages_does_not_stall_the_video(tmp_path, monkeypatch):
    """A damaged file makes ffmpeg write error after error; more than a pipe holds must not block it (it did: a
    corrupt 40 s video hung for good). Here an ffmpeg stand-in writes 1 MB of messages before its frames."""
    import os
    import signal
    import sys

    path = make(tmp_path / "x.mp4", "testsrc2=size=64x48:rate=25:duration=2")
    info = probe(path)
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write('x' * 1_000_000)\nsys.stderr.flush()\n"
                    f"sys.stdout.buffer.write(bytes(50 * 64 * 48 * 3))\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("iter_video blocked on ffmpeg's messages"))
    signal.alarm(30)
    try:
        frames = decode_video(path, info=info)
    finally:
        signal.alarm(0)
    assert frames.shape == (50, 48, 64, 3)


def test_a_stream_that_starts_late_keeps_its_end_and_mode_a_reads_all_the_audio(tmp_path):
    """Audio from 1 s to 5 s beside video from 0 to 5 s: the clip is 5 s (it was cut at 4 s, the audio's own length,
    losing its last second). A 1 s video beside 6 s of audio: mode a reads the 6 s, av stops with the video."""
    from mome_cli.preprocess import Preprocessor, PreprocessOptions

    late = tmp_path / "late.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x48:rate=25:duration=5", "-itsoffset", "1", "-f", "lavfi", "-i",
                    "sine=frequency=300:duration=4", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", late],
                   check=True)
    info = probe(late)
    assert info.duration == pytest.approx(5.0, abs=0.05)
    audio = decode_audio(late, info=info)
    assert np.abs(audio[: SAMPLE_RATE // 2]).max() < 0.01 and np.abs(audio[-SAMPLE_RATE // 2 :]).max() > 0.05
    short = make(tmp_path / "short.mp4", "testsrc2=size=64x48:rate=25:duration=1", "sine=frequency=300:duration=6",
                 ["-c:a", "aac"])
    assert probe(short).duration == pytest.approx(1.0, abs=0.05)
    assert len(Preprocessor(PreprocessOptions(mode="a"))(short).audio) == pytest.approx(6 * SAMPLE_RATE, abs=800)
    clip = Preprocessor(PreprocessOptions(mode="av", roi=True))(short)
    assert len(clip.audio) == pytest.approx(SAMPLE_RATE, abs=800)
    assert clip.warnings == ["the audio goes on 5.0 s after the video ends: that part is not transcribed (--mode a "
                             "reads the audio to its end)"]


def test_video_that_starts_late_loses_none_of_the_audio_before_it(tmp_path):
    """Video from 1 s to 5 s beside audio from 0 to 5 s: the audio is read from 0 (seeking to 0 used to land on the
    video's first keyframe at 1 s and drop the audio before it), the video's first frame is held until it starts."""
    both = make(tmp_path / "both.mp4", "testsrc2=size=64x48:rate=25:duration=5", "sine=frequency=300:duration=5",
                ["-c:a", "aac"])
    late = tmp_path / "late_video.mp4"  # the same streams, the video's 1 s later (its first keyframe at 1 s)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-itsoffset", "1", "-i", both, "-i", both, "-map",
                    "0:v", "-map", "1:a", "-c", "copy", late], check=True)
    info = probe(late)
    assert info.duration == pytest.approx(5.0, abs=0.05)  # where the audio ends
    audio = decode_audio(late, info=info)
    assert np.sqrt(np.mean(audio[: SAMPLE_RATE // 2] ** 2)) > 0.05  # the sine (RMS 0.088) from the start
    video = decode_video(late, info=info)
    assert len(video) == 125 and np.array_equal(video[0], video[20]) and not np.array_equal(video[25], video[40])


@pytest.mark.parametrize("container", ["mkv", "webm", "mp4"])
def test_a_video_that_outlasts_its_audio_ends_with_the_audio_in_every_container(tmp_path, container):
    """Matroska keeps no stream durations, only DURATION tags: without them the clip was the container's length, and
    the audio's real end was reported as a truncated file (padded with 1 s of silence); MP4 ended with the audio."""
    codecs = ["-c:v", "libvpx", "-c:a", "libopus"] if container == "webm" else ["-c:a", "aac"]
    path = make(tmp_path / f"clip.{container}", "testsrc2=size=64x48:rate=25:duration=3",
                "sine=frequency=300:sample_rate=48000:duration=2", codecs)
    info = probe(path)
    assert info.duration == pytest.approx(2.0, abs=0.05) and info.audio_duration == pytest.approx(2.0, abs=0.05)
    assert info.video_duration == pytest.approx(3.0, abs=0.05)  # where mode v reads to
    warnings = []
    assert len(decode_audio(path, info=info, warnings=warnings)) == round(info.duration * SAMPLE_RATE)
    assert warnings == []


def test_audio_alone_is_read_to_its_end_past_a_length_that_was_only_estimated(tmp_path):
    """A VBR MP3 without a Xing header (as ffmpeg writes one to a pipe): ffprobe guesses its length from the first
    frames' bitrate, 4.6 s for 10 s here, and the clip used to be cut there, the sound at its end lost."""
    from mome_cli.preprocess import Preprocessor, PreprocessOptions

    path = tmp_path / "vbr.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "anoisesrc=r=16000:d=2:a=0.3",
                    "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=6", "-f", "lavfi", "-i", "sine=f=300:r=16000:d=2",
                    "-filter_complex", "[0][1][2]concat=n=3:v=0:a=1", "-c:a", "libmp3lame", "-q:a", "2",
                    "-write_xing", "0", path], check=True)
    assert probe(path).duration < 8  # the estimate
    clip = Preprocessor(PreprocessOptions(mode="a"))(path)
    assert clip.duration == pytest.approx(10.0, abs=0.1) and len(clip.audio) == round(clip.duration * SAMPLE_RATE)
    assert np.sqrt(np.mean(clip.audio[-SAMPLE_RATE:] ** 2)) > 0.05 and clip.warnings == []


def test_audio_alone_ends_where_it_ends_before_a_length_that_was_only_estimated(tmp_path):
    """The other way round: 2 s of silence then 8 s of noise, guessed at 23 s from the silence's bitrate. The clip was
    padded with 13 s of silence and said to be "a truncated file?"."""
    from mome_cli.preprocess import Preprocessor, PreprocessOptions

    path = tmp_path / "vbr.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=2",
                    "-f", "lavfi", "-i", "anoisesrc=r=16000:d=8:a=0.5", "-filter_complex", "[0][1]concat=n=2:v=0:a=1",
                    "-c:a", "libmp3lame", "-q:a", "5", "-write_xing", "0", path], check=True)
    info = probe(path)
    assert info.duration > 15 and info.estimated  # the guess, and ffprobe says it is one
    clip = Preprocessor(PreprocessOptions(mode="a"))(path)
    assert clip.duration == pytest.approx(10.0, abs=0.1) and len(clip.audio) == round(clip.duration * SAMPLE_RATE)
    assert clip.warnings == [], clip.warnings


def test_a_clip_shorter_than_a_video_frame_is_said_to_be_too_short(tmp_path):
    """0.01 s of sound beside one video frame: the clip (what both streams hold) has no frame, and it said the video
    stream "holds no frames", which it does."""
    path = tmp_path / "blink.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=96x96:rate=25:d=1",
                    "-f", "lavfi", "-i", "sine=f=300:r=16000:d=1", "-t", "0.01", path], check=True)
    with pytest.raises(MediaError, match="too short: 0.01 s, not one video frame"):
        decode_video(path)


def test_a_file_with_two_audio_streams_says_which_is_read(tmp_path):
    """The first audio stream was read without a word, where a user may have meant the second (a silent first
    track gave an empty transcript)."""
    from mome_cli.preprocess import Preprocessor, PreprocessOptions

    path = tmp_path / "two.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=96x96:rate=25:d=1",
                    "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=1", "-f", "lavfi", "-i", "sine=f=300:r=16000:d=1",
                    "-map", "0", "-map", "1", "-map", "2", path], check=True)
    info = probe(path)
    assert (info.audio_streams, info.video_streams) == (2, 1)
    clip = Preprocessor(PreprocessOptions(roi=True))(path)
    assert "2 audio streams: the first is read (ffmpeg's -map 0:a:N makes a file of another)" in clip.warnings
    assert not any("video streams" in w for w in clip.warnings)


def test_a_live_recording_without_a_stored_duration_is_read_to_its_end(tmp_path):
    """What a browser's MediaRecorder or OBS writes: WebM whose headers keep no duration (it was "zero-length")."""
    live = tmp_path / "live.webm"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x48:rate=25:duration=3", "-f", "lavfi", "-i", "sine=frequency=300:duration=3",
                    "-c:v", "libvpx", "-c:a", "libopus", "-live", "1", live], check=True)
    info = probe(live)
    assert info.duration == pytest.approx(3.0, abs=0.1)
    assert len(decode_video(live, info=info)) == pytest.approx(75, abs=2)


def test_a_truncated_file_is_padded_to_its_announced_length_and_said_to_be_short(tmp_path):
    full, cut = tmp_path / "full.mp4", tmp_path / "cut.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=s=96x96:r=25:d=10",
                    "-f", "lavfi", "-i", "sine=f=300:d=10", "-c:v", "libx264", "-c:a", "aac", "-movflags", "+faststart",
                    "-shortest", str(full)], check=True)
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 3 // 10])  # a download cut short: the header is whole
    said = []
    assert len(decode_audio(cut, warnings=said)) == 160_000 and len(decode_video(cut, warnings=said)) == 250
    assert [w.split(" stops at ")[0] for w in said] == ["audio", "video"] and all("of the 10.00 s" in w for w in said)
    whole = []
    decode_audio(full, warnings=whole), decode_video(full, warnings=whole)
    assert whole == []


def test_matroska_duration_tags_are_read_as_their_writer_meant_them():
    """ffmpeg tags a stream with where it ends, mkvmerge with how long it lasts (older files: DURATION-eng)."""
    from mome_cli.media import _end

    late = {"start_time": "2.000", "tags": {"DURATION": "00:00:04.000000000"}}
    assert _end(late, 0.0, tags_end=True) == 4.0  # ffmpeg: it ends at 4 s
    assert _end({"start_time": "2.000", "tags": {"DURATION-eng": "00:00:02.000000000"}}, 0.0, tags_end=False) == 4.0
    assert _end({"start_time": "0.000", "tags": {"DURATION": "00:00:00.000000000"}}, 0.0) is None  # says nothing
    assert _end({"start_time": "0.000", "tags": {"DURATION": "soon"}}, 0.0) is None
    assert _end({"start_time": "1.000", "duration": "3.0", "tags": {"DURATION": "00:00:09"}}, 0.0) == 4.0


def test_media_errors_cross_process_boundaries_whole():
    """A worker process's error is pickled to its parent: MediaError took two arguments and pickled one message, so
    rebuilding it failed in the parent (synth --jobs 2 then waited for ever)."""
    import pickle

    from mome_cli.downloads import ChecksumError

    for error in (MediaError("a.mp4", "no such file"), NoAudioError("b.mp4", "no audio stream"),
                  ChecksumError(Path("w.pt"), "ab" * 32, "cd" * 32)):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
