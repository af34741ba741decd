"""Time-interleaving of audio chunks and video tokens (the compressed space's multimodal
sequence), and back, with the routing ops token_gather / token_scatter.

Each audio chunk is stamped with the time of its first audio frame (i hop / sample_rate), each
video token with its frame's time (j / visual_fps). Per clip, the two streams are merged in time
order (a video token first on a tie), giving one packed sequence per clip. Times are compared
exactly, in integer units of 1 / (sample_rate * visual_fps) seconds. Only the order is used:
no position or time value reaches the network.
"""

from typing import NamedTuple

import torch

from mmhnet.ops import token_gather, token_scatter

__all__ = ["Interleaving", "interleave_order", "sequence_index", "chunk_start_frames"]


class Interleaving(NamedTuple):
    """order (T,) int64: for each position of the interleaved packed sequence, its row in the pool
    [audio chunks (C rows); video tokens (B * V rows, clip-major)]; cu_seqlens (B + 1,) int32;
    token_sequence (T,) int64 the clip of each position; num_chunks C."""
    order: torch.Tensor
    cu_seqlens: torch.Tensor
    token_sequence: torch.Tensor
    num_chunks: int

    def gather(self, chunks, video):
        """chunks (C, d), video (B * V, d) -> interleaved (1, T, d)."""
        return token_gather(torch.cat([chunks, video]), self.order)[None]

    def chunks_of(self, interleaved):
        """interleaved (1, T, d) -> the audio chunk rows (C, d), in chunk order."""
        pool = token_scatter(interleaved[0], self.order, self.order.shape[0])
        return pool[:self.num_chunks]


def sequence_index(cu_seqlens, total):
    """cu_seqlens (nseq + 1,) -> (total,) int64: the sequence each packed row belongs to."""
    counts = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seqs = torch.arange(counts.shape[0], device=cu_seqlens.device)
    return torch.repeat_interleave(seqs, counts, output_size=total)


def chunk_start_frames(routing, num_frames):
    """The audio frame (within its clip) at which each chunk starts: (C,) int64.

    routing: the DynamicChunking Routing of a (B, num_frames, d) batch (boundary mask over the
    packed B * num_frames frames, clip-major)."""
    return torch.nonzero(routing.mask).squeeze(1) % num_frames


def interleave_order(chunk_frames, chunk_cu_seqlens, num_video, config):
    """Interleaving of C audio chunks (starting at audio frames ``chunk_frames`` (C,), clips
    delimited by ``chunk_cu_seqlens`` (B + 1,)) with ``num_video`` video tokens per clip."""
    device = chunk_frames.device
    fmt = config.audio_format
    num_chunks = chunk_frames.shape[0]
    batch = chunk_cu_seqlens.shape[0] - 1
    chunk_clip = sequence_index(chunk_cu_seqlens, num_chunks)
    video_frames = torch.arange(num_video, device=device).repeat(batch)
    video_clip = torch.arange(batch, device=device).repeat_interleave(num_video)
    # time in units of 1 / (sample_rate * visual_fps) s: audio frame i -> i * hop * visual_fps,
    # video frame j -> j * sample_rate
    times = torch.cat([chunk_frames * (fmt.hop * config.visual_fps), video_frames * fmt.sample_rate])
    clips = torch.cat([chunk_clip, video_clip])
    is_audio = torch.cat([torch.ones_like(chunk_frames), torch.zeros_like(video_frames)])
    span = int(times.max()) + 1 if times.numel() else 1
    key = (clips * span + times) * 2 + is_audio
    order = torch.argsort(key)
    counts = (chunk_cu_seqlens[1:] - chunk_cu_seqlens[:-1]).long() + num_video
    cu = torch.nn.functional.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
    return Interleaving(order, cu, clips.index_select(0, order), num_chunks)
