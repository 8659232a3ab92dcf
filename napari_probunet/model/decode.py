"""Fast sampling: fcomb's decode with the image's part computed once (torch).

fcomb's first 1x1 conv acts on ``[F; z]`` with z constant over the image, so
``W [F; z] + b = (W_F F + b) + W_z z``. :meth:`SplitFcomb.prepare` computes the image term once,
pixel-major ``(pixels, hidden)``, into a :class:`PreparedDecoder`; each decode adds a sample's
own per-channel bias ``W_z z`` and runs the remaining 1x1 convs as matrix products over the
pixels of all samples in a chunk, in cache-sized blocks with preallocated buffers. For two
classes only the logit difference is needed for the label map. docs/performance.md has the
figures; :meth:`napari_probunet.session.Session.decode_unsplit` is the plain reference path.
"""

from __future__ import annotations

import torch

#: pixel-samples per decoding block: 16384 x 32 hidden channels x 4 bytes = 2 MiB, cache-sized
BLOCK_ROWS = 16384


class SplitFcomb:
    """fcomb's weights, pixel-major and split for fast decoding (read once from the module:
    the weights as they were when it was made). Made by
    :meth:`napari_probunet.model.network.Fcomb.split`."""

    def __init__(self, fcomb) -> None:
        w_f, w_z, b = fcomb.split_first_layer()
        self.w_f = w_f.detach().t().contiguous()  # (c_F, c_h)
        self.w_z = w_z.detach().t().contiguous()  # (d, c_h)
        self.b0 = b.detach().clone()
        self.hidden = [(c.weight.detach()[:, :, 0, 0].t().contiguous(), c.bias.detach().clone())
                       for c in fcomb.hidden[1:]]
        w_out = fcomb.logits.weight.detach()[:, :, 0, 0]
        b_out = fcomb.logits.bias.detach()
        self.w_out, self.b_out = w_out.t().contiguous(), b_out.clone()
        self.num_classes = int(w_out.shape[0])
        # binary: label = [logit_1 - logit_0 > 0]
        self.w_diff = (w_out[1] - w_out[0]).contiguous() if self.num_classes == 2 else None
        self.b_diff = float(b_out[1] - b_out[0]) if self.num_classes == 2 else 0.0

    def image_term(self, features: torch.Tensor) -> torch.Tensor:
        """F ``(H, W, c_F)`` (pixel-major) -> the first layer's image term ``(H * W, c_h)``."""
        # pixel-major (P, c_F): a free view when F is channels-last and nothing was cropped
        return features.reshape(-1, features.shape[-1]) @ self.w_f + self.b0

    def prepare(self, features: torch.Tensor) -> PreparedDecoder:
        """The per-image decoder of F ``(H, W, c_F)``; see :class:`PreparedDecoder`."""
        return PreparedDecoder(self, self.image_term(features).contiguous())


class PreparedDecoder:
    """One image's decoder: ``base`` ``(P, c_h)`` is the image term of fcomb's first layer for
    the ``P`` pixels (row-major over the image); :meth:`decode` turns latents into labels."""

    def __init__(self, split: SplitFcomb, base: torch.Tensor) -> None:
        self.split = split
        self.base = base

    @property
    def pixels(self) -> int:
        return int(self.base.shape[0])

    def decode(self, z: torch.Tensor, want_probs: bool = False):
        """z ``(n, d)`` -> labels ``(n, P)`` uint8 (and probs ``(n, C, P)`` float32, else None).

        Works through blocks of about :data:`BLOCK_ROWS` pixel-samples (a whole sample, part of
        one, or several small ones) with preallocated buffers, so the hidden activations stay
        in cache; big intermediate tensors made this memory-bound and 3-4x slower.
        """
        sp, base = self.split, self.base
        device = base.device
        n, p = z.shape[0], base.shape[0]
        bias = z @ sp.w_z  # (n, c_h): the z term of fcomb's first layer
        n_cls = sp.num_classes
        labels = torch.empty((n, p), dtype=torch.uint8, device=device)
        probs = torch.empty((n, n_cls, p), device=device) if want_probs else None
        binary = n_cls == 2 and not want_probs
        per_block = max(1, BLOCK_ROWS // p)  # samples per block when an image is small
        rows = min(p, BLOCK_ROWS) if per_block == 1 else per_block * p
        c_h = base.shape[1]
        buf_a = torch.empty((rows, c_h), device=device)
        buf_b = torch.empty((rows, c_h), device=device)
        out_buf = torch.empty(rows, device=device) if binary else None
        for s in range(0, n, per_block):
            k = min(per_block, n - s)
            for p0 in range(0, p, rows if per_block == 1 else p):
                m = min(rows, p - p0) if per_block == 1 else k * p
                a, b = buf_a[:m], buf_b[:m]
                torch.add(base[p0:p0 + m // k].unsqueeze(0), bias[s:s + k, None, :],
                          out=a.view(k, m // k, c_h))
                a.relu_()
                for w, bb in sp.hidden:
                    torch.addmm(bb, a, w, out=b)
                    b.relu_()
                    a, b = b, a
                target = labels[s:s + k, p0:p0 + m // k]
                if binary:
                    torch.mv(a, sp.w_diff, out=out_buf[:m])
                    torch.gt(out_buf[:m].view(k, m // k), -sp.b_diff, out=target)
                    continue
                logits = torch.addmm(sp.b_out, a, sp.w_out).view(k, m // k, n_cls)
                target.copy_(logits.argmax(dim=-1))
                if want_probs:
                    probs[s:s + k, :, p0:p0 + m // k] = logits.softmax(dim=-1).transpose(1, 2)
        return labels, probs

    def logits_at(self, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """fcomb at a few pixels only: z ``(n, d)``, ``index`` ``(k,)`` pixel numbers
        (row-major) -> class logits ``(n, k, C)`` float32.

        Cheap for many latents (a click's prediction under thousands of hypotheses costs about
        as much as one full decode); the same arithmetic as :meth:`decode`, so the label
        (argmax) agrees with the full map's at those pixels up to float rounding.
        """
        sp = self.split
        base = self.base[index]  # (k, c_h)
        bias = z @ sp.w_z  # (n, c_h)
        n, k, c_h = z.shape[0], base.shape[0], base.shape[1]
        out = torch.empty((n, k, sp.num_classes), device=base.device)
        step = max(1, BLOCK_ROWS // max(1, k))
        for s in range(0, n, step):
            a = (base.unsqueeze(0) + bias[s:s + step, None, :]).reshape(-1, c_h).relu_()
            for w, bb in sp.hidden:
                a = torch.addmm(bb, a, w).relu_()
            out[s:s + step] = torch.addmm(sp.b_out, a, sp.w_out).view(-1, k, sp.num_classes)
        return out
