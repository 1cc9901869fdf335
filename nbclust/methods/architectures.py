"""Network builders of DCAE, DBC's FCAE and DCEC, with their rules for any image size.

Every builder takes ``image_shape = (C, H, W)`` and the layer keywords
``backend``, ``dtype``, ``rng`` (an int seed or a Generator, turned into one
Generator shared by all layers) and returns ``(encoder, decoder)`` Sequentials;
``decoder(encoder(x))`` has the shape of ``x``.  Kernel sizes are per axis, so
non-square images work too.
"""

from __future__ import annotations

import math

from nbclust.engine import convshape, nn
from nbclust.engine.nn.module import as_generator


def _kw(backend, dtype, rng):
    """Layer keywords; ``rng`` becomes one Generator that every layer draws from in turn."""
    return {"backend": backend, "dtype": dtype, "rng": as_generator(rng)}


RELU_BIAS = 0.1  # initial bias of the DCAE layers that feed a ReLU (see dcae())


def dcae_kernels(side: int) -> tuple[int, int, int]:
    """Kernel sizes of DCAE along one axis: (encoder conv k, decoder convT a, decoder convT b).

    The paper (28x28): two valid 9x9 convs (28 -> 20 -> 12), and the decoder
    12x12 then 17x17 transposed convs (1 -> 12 -> 28).  Rule for a side S:
    k = max(2, round(9 S / 28)), the feature side S - 2(k - 1) is the first
    transposed kernel a, and b = S - a + 1 restores S (28 -> 9, 12, 17;
    8 -> 3, 4, 5; 16 -> 5, 8, 9; 32 -> 10, 14, 19; 64 -> 21, 24, 41).
    """
    k = max(2, round(9 * side / 28))
    a = side - 2 * (k - 1)
    return k, a, side - a + 1


def matconvnet_xavier(seq, rng) -> None:
    """Redraw the weights of ``seq``'s conv, transposed conv and dense layers as MatConvNet's
    "xavier": U(+-sqrt(3 / (kh kw in))), ``in`` the layer's input channels (features)."""
    for layer in seq.layers:
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            fan = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels * math.prod(
                layer.kernel_size)
            _redraw(layer, rng.uniform(-math.sqrt(3.0 / fan), math.sqrt(3.0 / fan), size=layer.weight.shape))


CAFFE_SPARSE = 25  # the ``sparse`` of the base network's 250-unit dense layers (Caffe GaussianFiller)


def caffe_fillers(seq, rng, code_layer=None) -> None:
    """Redraw ``seq``'s weights as the fillers of DCAE's base network (Turchenko & Luczak, Caffe;
    ``train-mnistCAE10sym0202.prototxt``), biases 0 (``constant``):

    * conv and transposed conv, ``xavier``: Caffe's XavierFiller, U(+-sqrt(3 / fan_in)) with
      fan_in = count / shape[0]; the weight blob is (out, in, kh, kw) for a convolution and
      (in, out, kh, kw) for a deconvolution, so a transposed conv's fan counts its *output*
      channels (as torch's ``fan_in``), unlike :func:`matconvnet_xavier`;
    * dense, ``gaussian std: 1, sparse: s``: N(0, 1) weights, each kept with probability
      s / num_outputs (Caffe's GaussianFiller divides by the blob's first axis, its outputs);
      s = 25 on the hidden layers (``sparse: 25``, 250 outputs: p = 0.1), and the code layer
      ``code_layer`` dense (the file's ``sparse: 2`` on its 2 outputs is p = 1).
    """
    for layer in seq.layers:
        if isinstance(layer, nn.Linear):
            out = layer.out_features
            keep = 1.0 if layer is code_layer else min(1.0, CAFFE_SPARSE / out)
            shape = layer.weight.shape
            _redraw(layer, rng.normal(0.0, 1.0, size=shape) * (rng.random(shape) < keep))
        elif isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            shape = layer.weight.shape
            bound = math.sqrt(3.0 * shape[0] / math.prod(shape))
            _redraw(layer, rng.uniform(-bound, bound, size=shape))
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            layer.bias.data[...] = 0


def _redraw(layer, weights) -> None:
    w = layer.weight.data
    w[...] = layer._backend.asarray(weights, w.dtype)


def dcae(image_shape, embedding_dim=10, hidden=250, *, network="paper", activation="sigmoid", init="matconvnet",
         backend="cpu", dtype=None, rng=None):
    """DCAE (seeds 000/001): conv k x8 -> conv k x4 -> dense 250 -> dense 10, mirrored decoder.

    ``network="paper"``: the embedding is the sigmoid of the code layer, and the decoder is
    dense 250 -> reshape 250x1x1 -> convT (a x a, 4 maps) -> convT (b x b, C maps), whose
    output are the logits.  ``network="caffe"``: the base network DCAE adopts (seed 001, ref
    [14]: Turchenko & Luczak's Caffe files, ``train-mnistCAE10sym0202.prototxt``, copy in GitHub
    haider8645/master-thesis at 3fce88b): the code layer ``ip2encode`` is linear (the
    embedding), the second transposed conv keeps the paper's 4 maps (``deconv1``, 17x17 at
    28x28) with its activation, and a 1x1 transposed conv (``deconv1neur``) merges them into
    the C logits of the SigmoidCrossEntropyLoss.
    ``activation="sigmoid"`` (the paper, seed 001: "a standard sigmoid activation function",
    and the base network): sigmoid after every hidden layer.  ``"relu"``: ReLU after the
    hidden layers.  In the paper network the embedding keeps the sigmoid either way: it
    bounds h to (0, 1)^d, so E2 (eq 4) cannot grow with the embedding's scale (why that
    matters: :mod:`nbclust.methods.dcae`).
    The decoder's last layer is linear: it returns
    logits, and the image is their sigmoid, fused into the cross-entropy (op
    ``bce_with_logits``, Caffe's SigmoidCrossEntropyLoss as in DCAE's base network) so that
    a saturated output keeps its gradient; ``DCAE.reconstruct`` applies the sigmoid.
    Weights (``init``): ``"matconvnet"``, :func:`matconvnet_xavier` (the paper's "Xavier
    method" as MatConvNet, its toolbox, implements it), ``"glorot"``, U(+-sqrt(6 / (fan_in +
    fan_out))) (Glorot & Bengio, the paper's ref [16]), or ``"caffe"``, :func:`caffe_fillers`
    (the base network's own fillers).  Biases: zero (the paper), except that
    in the ReLU network every layer followed by a ReLU starts with bias ``RELU_BIAS`` = 0.1,
    the usual guard against dead ReLUs ("a slightly positive initial bias to avoid dead
    neurons", 0.1: TensorFlow's Deep MNIST tutorial; Krizhevsky et al. 2012 used 1 for the
    same reason).  Why: Glorot's fan average
    shrinks the expanding decoder layers (dense 10 -> 250: bound 0.15; convT 250 -> 4 maps on
    a 1x1 map: 0.038), so with zero biases the 4-map convT's pre-activations start within ~0.02 of 0
    for every sample (8x8 digits) while SGD moves its biases by ~0.1 in the first epoch
    (momentum 0.9; bias gradient ~1 against ~0.2 for the weights, from fitting the mean
    image).  If the 4 channels end negative for every sample, nothing revives them: the
    decoder output is one constant image, E1 stays at 39.3 and ACC at 0.32 (seed 0).
    Bias 0.1 was chosen from digits runs at biases 0 to 0.2 (seeds 0-19, Glorot weights and the
    linear embedding of that time): the smallest at which no seed lost more than one of its 4
    maps.  Half the step or an output bias at the logit of the mean pixel did not prevent the
    death; MatConvNet's bounds then let the encoder's 4-map conv die instead (2 of 20 seeds),
    which no seed of 0-9 showed with the sigmoid embedding (``docs/results.md``).
    """
    if network not in ("paper", "caffe"):
        raise ValueError(f"network must be 'paper' or 'caffe', got {network!r}")
    if activation not in ("sigmoid", "relu"):
        raise ValueError(f"activation must be 'sigmoid' or 'relu', got {activation!r}")
    if init not in ("glorot", "matconvnet", "caffe"):
        raise ValueError(f"init must be 'glorot', 'matconvnet' or 'caffe', got {init!r}")
    kw = _kw(backend, dtype, rng)
    act = (lambda: nn.Sigmoid(**kw)) if activation == "sigmoid" else (lambda: nn.ReLU(**kw))
    C, H, W = image_shape
    (kh, ah, bh), (kw_, aw, bw) = dcae_kernels(H), dcae_kernels(W)
    feat = 4 * (H - 2 * (kh - 1)) * (W - 2 * (kw_ - 1))
    enc = [nn.Conv2d(C, 8, (kh, kw_), **kw), act(), nn.Conv2d(8, 4, (kh, kw_), **kw), act(), nn.Flatten(**kw),
           nn.Linear(feat, hidden, **kw), act(), nn.Linear(hidden, embedding_dim, **kw)]
    code = enc[-1]
    dec = [nn.Linear(embedding_dim, hidden, **kw), act(), nn.Reshape((hidden, 1, 1), **kw),
           nn.ConvTranspose2d(hidden, 4, (ah, aw), **kw), act()]
    if network == "paper":
        enc.append(nn.Sigmoid(**kw))
        dec.append(nn.ConvTranspose2d(4, C, (bh, bw), **kw))  # logits: the sigmoid is in the loss
    else:
        dec += [nn.ConvTranspose2d(4, 4, (bh, bw), **kw), act(), nn.ConvTranspose2d(4, C, 1, **kw)]
    enc, dec = nn.Sequential(*enc), nn.Sequential(*dec)
    for seq in (enc, dec):
        if init == "matconvnet":
            matconvnet_xavier(seq, kw["rng"])
        elif init == "caffe":
            caffe_fillers(seq, kw["rng"], code_layer=code)
    if activation == "relu":  # a small positive bias keeps every ReLU unit alive at the start
        for seq in (enc, dec):
            for layer, nxt in zip(seq.layers, seq.layers[1:]):
                if isinstance(nxt, nn.ReLU):
                    layer.bias.data[...] = RELU_BIAS
    return enc, dec


# DBC Table 2 columns: (conv kernel, filters, padding) per conv+pool block, then (feature kernel, filters).
FCAE_TABLE = {
    28: ([(5, 6, 0), (5, 16, 0)], 120),  # MNIST: 28 -> 24 -> 12 -> 8 -> 4 -> 1
    16: ([(3, 20, 1), (3, 20, 1)], 160),  # USPS: 16 -> 16 -> 8 -> 8 -> 4 -> 1
    128: ([(9, 20, 0), (5, 20, 0), (5, 20, 0), (5, 40, 0)], 320),  # COIL: 128 -> ... -> 4 -> 1
}


def fcae_plan(height: int, width: int):
    """Blocks ``[(k, filters, pad)]`` and feature filters of the FCAE for an image size.

    Square sizes of Table 2 (28, 16, 128) use the paper's column.  Any other
    size uses USPS-style blocks (3x3 conv, 20 maps, padding 1, then 2x2 max-pool)
    while the larger side exceeds 4, then a feature conv whose kernel is the
    remaining map (so the feature layer is 1x1, as in all columns) with 160 maps.
    """
    if height == width and height in FCAE_TABLE:
        return FCAE_TABLE[height]
    blocks, side = [], max(height, width)
    while side > 4:
        blocks.append((3, 20, 1))
        side //= 2
    return blocks, 160


def fcae(image_shape, *, init="glorot", backend="cpu", dtype=None, rng=None):
    """DBC's fully convolutional auto-encoder (seed 002, Table 2), 1x1 feature layer.

    Weights (``init``, the paper names none): ``"glorot"`` (nbclust's layer default) or ``"caffe"``,
    Caffe's ``xavier`` filler of the first author's Caffe files (:func:`caffe_fillers`).

    Encoder: [conv -> BN -> ReLU -> max-pool 2] per block, conv (feature) -> BN -> ReLU -> flatten.
    Decoder, "totally reversed": reshape -> convT (feature kernel) -> BN -> ReLU, then per
    block max-unpool (paired with its pool) -> convT (same kernel and padding), with BN and
    ReLU except on the output layer, which is linear (Euclidean loss).  Table 2 names no
    activation; ReLU is our choice (it gives the sparse feature activations of Fig. 4).
    """
    kw = _kw(backend, dtype, rng)
    C, H, W = image_shape
    blocks, n_feat = fcae_plan(H, W)
    enc, pools, sizes, ch, h, w = [], [], [], C, H, W
    for k, f, p in blocks:
        pool = nn.MaxPool2d(2, **kw)
        enc += [nn.Conv2d(ch, f, k, padding=p, **kw), nn.BatchNorm2d(f, **kw), nn.ReLU(**kw), pool]
        pools.append(pool)
        sizes.append((ch, k, p))
        ch, h, w = f, (h + 2 * p - k + 1) // 2, (w + 2 * p - k + 1) // 2
    if min(h, w) < 1:
        raise ValueError(f"images of size {H}x{W} are too small for the FCAE")
    enc += [nn.Conv2d(ch, n_feat, (h, w), **kw), nn.BatchNorm2d(n_feat, **kw), nn.ReLU(**kw), nn.Flatten(**kw)]
    dec = [nn.Reshape((n_feat, 1, 1), **kw), nn.ConvTranspose2d(n_feat, ch, (h, w), **kw)]
    dec += [nn.BatchNorm2d(ch, **kw), nn.ReLU(**kw)]
    for i in reversed(range(len(blocks))):
        c_out, k, p = sizes[i]
        dec += [nn.MaxUnpool2d(pools[i], **kw), nn.ConvTranspose2d(blocks[i][1], c_out, k, padding=p, **kw)]
        if i > 0:
            dec += [nn.BatchNorm2d(c_out, **kw), nn.ReLU(**kw)]
    enc, dec = nn.Sequential(*enc), nn.Sequential(*dec)
    if init == "caffe":
        for seq in (enc, dec):
            caffe_fillers(seq, kw["rng"])
    elif init != "glorot":
        raise ValueError(f"init must be 'glorot' or 'caffe', got {init!r}")
    return enc, dec


def dcec_sizes(side: int) -> tuple[int, int, int, bool]:
    """DCEC feature sides along one axis: S -> ceil(S/2) -> ceil(S/4) -> s3, and whether conv3 is "same".

    As the reference DCEC code: conv3 is "same" when S % 8 == 0, else "valid"; Keras' "same"
    with stride 2 gives ceil(n / 2) outputs.
    """
    s1 = math.ceil(side / 2)
    s2 = math.ceil(s1 / 2)
    same = side % 8 == 0
    s3 = math.ceil(s2 / 2) if same else (s2 - 3) // 2 + 1
    return s1, s2, s3, same


def dcec_paddings(height: int, width: int):
    """The paddings of DCEC's three convolutions on an H x W image, TensorFlow's "same" per axis
    (:func:`nbclust.engine.convshape.tf_same_padding`): conv1 k5 s2 on H x W, conv2 k5 s2 on
    ceil(H/2) x ceil(W/2), conv3 k3 s2 ("same", or zero on an axis where it is "valid"), each as
    ``((top, bottom), (left, right))``.  28x28: ``((1, 2), (1, 2))``, ``((1, 2), (1, 2))``, zero;
    32x32: ``((1, 2), (1, 2))`` twice, ``((0, 1), (0, 1))``; 27x27: ``((2, 2), (2, 2))``, ``((1, 2), (1, 2))``, zero.
    """
    (h1, h2, _, same_h), (w1, w2, _, same_w) = dcec_sizes(height), dcec_sizes(width)
    p1 = convshape.tf_same_padding((height, width), 5, 2)
    p2 = convshape.tf_same_padding((h1, w1), 5, 2)
    p3h, p3w = convshape.tf_same_padding((h2, w2), 3, 2)
    return p1, p2, (p3h if same_h else (0, 0), p3w if same_w else (0, 0))


def _mirror(n_in, n_out, kernel, stride, pads):
    """output_padding of the transposed conv from n_out back to n_in that crops ``pads``: the
    rows a "valid" strided conv left unread (0 after a "same" conv, which reads every row)."""
    return tuple(n - ((m - 1) * stride + kernel - a - b) for n, m, (a, b) in zip(n_in, n_out, pads))


def dcec(image_shape, embedding_dim=10, filters=(32, 64, 128), *, backend="cpu", dtype=None, rng=None):
    """DCEC's convolutional auto-encoder (Guo et al. 2017), as the reference code's Keras ``CAE``
    (github.com/XifengGuo/DCEC, ConvAE.py, commit c9f016e):

        Conv2D(32, 5, strides=2, padding='same') -> Conv2D(64, 5, strides=2, padding='same') ->
        Conv2D(128, 3, strides=2, padding='same' if S % 8 == 0 else 'valid') -> Flatten ->
        Dense(10) (linear embedding); Dense -> Reshape -> Conv2DTranspose(64, 3, strides=2, pad3)
        -> Conv2DTranspose(32, 5, strides=2, 'same') -> Conv2DTranspose(C, 5, strides=2, 'same')
        (linear output), ReLU elsewhere.

    Padding as TensorFlow's: Keras "same" with stride 2 pads asymmetrically, the odd extra row
    and column at the bottom and right (``tf.nn`` "Notes on padding",
    https://www.tensorflow.org/api_docs/python/tf/nn#notes_on_padding_2), so a 28x28 image is
    padded ``((1, 2), (1, 2))`` by conv1 (28 -> 14) and conv2 (14 -> 7), and conv3 is valid
    (7 -> 3); the decoder is 3 -> 7 (valid) -> 14 -> 28, its "same" transposed convs cropping
    the full output ``((1, 2), (1, 2))`` (Keras' ``Conv2DTranspose(padding="same")``: output
    ``n * s``, crop ``k - s`` with the odd one at the end).  Paddings: :func:`dcec_paddings`;
    the sampling grid is the Keras model's (a symmetric padding of 2 would shift it by a pixel).

    Each transposed conv mirrors its encoder conv: output = that conv's input size, crop = its
    padding, plus the output_padding that a valid conv's unread last row needs.  Where the
    reference decoder restores the image (S % 8 in {0, 4}: 28, 32, 16, 20, ...) this is exactly
    its layers.  For other sizes the reference returns 8 * floor(S / 8) + 4 (valid) pixels per
    axis and its MSE fails; here the mirror still restores S (27: 27 -> 14 -> 7 -> 3, decoder
    3 -> 7 -> 14 -> 27, conv1 padded ``((2, 2), (2, 2))``).  Axes are treated independently,
    so non-square images work too (the reference code is square-only).
    """
    kw = _kw(backend, dtype, rng)
    C, H, W = image_shape
    (h1, h2, h3, _), (w1, w2, w3, _) = dcec_sizes(H), dcec_sizes(W)
    if min(h3, w3) < 1:
        raise ValueError(f"images of size {H}x{W} are too small for DCEC")
    f1, f2, f3 = filters
    p1, p2, p3 = dcec_paddings(H, W)
    enc = nn.Sequential(
        nn.Conv2d(C, f1, 5, stride=2, padding=p1, **kw), nn.ReLU(**kw),
        nn.Conv2d(f1, f2, 5, stride=2, padding=p2, **kw), nn.ReLU(**kw),
        nn.Conv2d(f2, f3, 3, stride=2, padding=p3, **kw), nn.ReLU(**kw),
        nn.Flatten(**kw), nn.Linear(f3 * h3 * w3, embedding_dim, **kw),
    )
    dec = nn.Sequential(
        nn.Linear(embedding_dim, f3 * h3 * w3, **kw), nn.ReLU(**kw), nn.Reshape((f3, h3, w3), **kw),
        nn.ConvTranspose2d(f3, f2, 3, stride=2, padding=p3, output_padding=_mirror((h2, w2), (h3, w3), 3, 2, p3),
                           **kw), nn.ReLU(**kw),
        nn.ConvTranspose2d(f2, f1, 5, stride=2, padding=p2, output_padding=_mirror((h1, w1), (h2, w2), 5, 2, p2),
                           **kw), nn.ReLU(**kw),
        nn.ConvTranspose2d(f1, C, 5, stride=2, padding=p1, output_padding=_mirror((H, W), (h1, w1), 5, 2, p1), **kw),
    )
    return enc, dec
