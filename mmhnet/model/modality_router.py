"""Multimodal routing (text vs video): one conditioning token per visual frame that carries the
frame's video token, the text matched to it, or a mix, as a learned router decides.

For visual frame j with video token v_j (d) and text tokens s_1..s_K (d):

    u_j   = sum_k softmax_k(q(v_j) . k(s_k) / sqrt(d)) v(s_k)     the text this frame matches
    rho_j = sigmoid(w . [v_j, u_j] + b)                           router: 0 video .. 1 text
    m_j   = (1 - rho_j) v_j + rho_j u_j

Every frame carries its own text summary, so the text stays next to every audio chunk in the
time-interleaved sequence however long the clip is; nothing depends on positions (the text
tokens are a set here). Cost: K (77) per frame, linear in duration.
"""

import math

import torch
import torch.nn as nn

__all__ = ["ModalityRouter"]


class ModalityRouter(nn.Module):
    """video (B, V, d), text (B, K, d) -> (routed tokens (B, V, d), rho (B, V) in [0, 1])."""

    def __init__(self, d_model):
        super().__init__()
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model)
        self.router = nn.Linear(2 * d_model, 1)
        nn.init.zeros_(self.router.weight)
        nn.init.constant_(self.router.bias, -2.0)   # starts mostly on the video side (rho ~ 0.12)

    def forward(self, video, text):
        scores = self.query(video) @ self.key(text).transpose(1, 2) / math.sqrt(video.shape[-1])
        matched = torch.softmax(scores.float(), dim=-1).to(video.dtype) @ self.value(text)
        rho = torch.sigmoid(self.router(torch.cat([video, matched], dim=-1)))
        return video + rho * (matched - video), rho[..., 0]
