"""Real-size mome recognisers with random weights, built in memory for timing (no download, nothing saved).

A preset's configuration (mome_cli.recognizer.preset_config: its LLM, Whisper-medium.en, AV-HuBERT Large, the rates
and MoME modules of the paper) is built from the published shapes: the LLM from mome_cli.llm.LLM_SHAPES, Whisper's
encoder from WHISPER_MEDIUM, AV-HuBERT Large from AVHubertConfig.large(). The weights are random, which changes
nothing a timing sees except when the text ends: a random LM never picks EOS, so every decode runs its full token
budget (the benchmarks say how many tokens they generate). The tokenizer is mome's byte-level one (its ids are a
subset of the LLM's 128,256), so the LM head still has the real vocabulary's width.

Used by encoders.py, latency.py, throughput.py and train_step.py.
"""

from __future__ import annotations

import numpy as np
import torch

from mome_cli.avhubert import AVHubertConfig, AVHubertVideoEncoder
from mome_cli.encoders import SAMPLE_RATE, WhisperAudioEncoder
from mome_cli.llm import LLM_SHAPES, byte_tokenizer, llm_config
from mome_cli.model import AVSRModel
from mome_cli.recognizer import Recognizer, preset_config

# openai/whisper-medium.en's encoder (its config.json): 24 layers, 1024 wide, 16 heads, FFN 4096, 80 mel bins.
WHISPER_MEDIUM = dict(d_model=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096,
                      decoder_layers=1, decoder_attention_heads=16, decoder_ffn_dim=4096, num_mel_bins=80,
                      vocab_size=51864, pad_token_id=50256, bos_token_id=50256, eos_token_id=50256,
                      decoder_start_token_id=50257)
ROI_SIDE = 96  # mouth crops as the media stage writes them (the recogniser centre-crops 88 x 88)


def build_whisper_medium(device: str, dtype: torch.dtype) -> WhisperAudioEncoder:
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device(device):
        encoder = WhisperEncoder(WhisperConfig(**WHISPER_MEDIUM))
    return WhisperAudioEncoder(encoder, WhisperFeatureExtractor()).to(device=device, dtype=dtype)


def build_recognizer(preset: str, device: str = "cuda", seed: int = 0) -> Recognizer:
    """The preset's recogniser with random weights: backbones in bf16 on CUDA (fp32 on CPU), adapters in fp32, as
    mome_cli.recognizer loads a real one."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    config = preset_config(preset)
    tokenizer = byte_tokenizer()
    shape = LLM_SHAPES[config.llm]
    llm_conf = llm_config(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    with torch.device(device):  # drawn where it runs: an 8B model is not first made in host memory
        llm = AutoModelForCausalLM.from_config(llm_conf, dtype=dtype)
    llm.requires_grad_(False).eval()
    model = AVSRModel(config, llm, tokenizer).to(device).eval()
    audio = build_whisper_medium(device, dtype)
    with torch.device(device):
        video = AVHubertVideoEncoder(AVHubertConfig.large())
    video = video.eval().requires_grad_(False).to(device=device, dtype=dtype)
    return Recognizer(model, audio, video, name=f"{preset} (random weights)")


def native(recognizer: Recognizer) -> Recognizer:
    """The same recogniser with its LLM and Whisper encoder on mome's own code (llama.py, whisper.py), as
    mome_cli.recognizer loads real backbones: the same weight tensors (q/k/v and gate/up fused into new ones), the
    same MoME modules, projectors and AV-HuBERT."""
    from mome_cli.llama import LlamaConfig, build_from_weights, llama_from_weights
    from mome_cli.whisper import LogMel, WhisperEncoder, WhisperEncoderConfig

    hf = recognizer.model.llm
    config = LlamaConfig.from_dict(hf.config.to_dict())
    llm = llama_from_weights(config, hf.state_dict(), "transformers' LLM").fuse_projections()
    model = AVSRModel(recognizer.model.config, llm, recognizer.model.tokenizer)
    model.load_state_dict(recognizer.model.trainable_state_dict(), strict=False)
    whisper = recognizer.audio_encoder.encoder
    encoder = build_from_weights(lambda: WhisperEncoder(WhisperEncoderConfig.from_dict(whisper.config.to_dict())),
                                 whisper.state_dict(), "transformers' Whisper encoder", "Whisper")
    device = next(hf.parameters()).device
    audio = WhisperAudioEncoder(encoder, LogMel().to(device))
    return Recognizer(model.to(device).eval(), audio, recognizer.video_encoder, name=recognizer.name)


def clip(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(16 kHz float32 samples, (25 x seconds, 96, 96) uint8 mouth crops): noise, which costs what speech costs."""
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)
    rois = rng.integers(0, 256, size=(round(seconds * 25), ROI_SIDE, ROI_SIDE), dtype=np.uint8)
    return audio, rois


def sync() -> None:
    """Wait for the GPU's queued work, so that a host clock read next times it (nothing to wait for on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine_line(device: str) -> str:
    import platform

    import transformers

    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    return (f"device {device} ({name}), torch {torch.__version__}, transformers {transformers.__version__}, "
            f"CPU threads {torch.get_num_threads()}")

